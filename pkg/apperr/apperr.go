// Package apperr is the project's application error: a Code, a stable
// snake_case Reason, a Message that is safe to show to clients and an
// optional cause that never is. Domain code returns *Error; one gRPC
// interceptor maps it to a status through ToStatus, and grpc-gateway (or
// HTTPStatus for the gateway's own handlers) maps that to HTTP. Keeping the
// table in one place means a code means the same thing on every surface.
package apperr

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Domain is the ErrorInfo domain of every status produced here.
const Domain = "biobridge"

// Code classifies an application error. The zero value is not a valid code
// and is treated as Internal, so a forgotten code never looks like success
// or like the client's fault.
type Code int

// The codes, each with one gRPC code and one HTTP status (see the table below).
const (
	Invalid Code = iota + 1
	NotFound
	AlreadyExists
	Unauthenticated
	PermissionDenied
	ResourceExhausted
	Unavailable
	FailedPrecondition
	// TooLarge is a request body or message over its size limit. gRPC has no
	// dedicated code: it maps to InvalidArgument (never ResourceExhausted,
	// which tells clients to retry, and a too-large body never succeeds on
	// retry) with the code recorded in the ErrorInfo metadata so the gateway
	// can still answer 413 (see CodeFromStatus).
	TooLarge
	Internal
)

type codeInfo struct {
	name string // snake_case, used as default reason and in ErrorInfo metadata
	grpc codes.Code
	http int
	msg  string // default client message
}

// table is the single mapping of codes to gRPC and HTTP.
var table = map[Code]codeInfo{
	Invalid:            {"invalid", codes.InvalidArgument, http.StatusBadRequest, "invalid request"},
	NotFound:           {"not_found", codes.NotFound, http.StatusNotFound, "not found"},
	AlreadyExists:      {"already_exists", codes.AlreadyExists, http.StatusConflict, "already exists"},
	Unauthenticated:    {"unauthenticated", codes.Unauthenticated, http.StatusUnauthorized, "unauthenticated"},
	PermissionDenied:   {"permission_denied", codes.PermissionDenied, http.StatusForbidden, "permission denied"},
	ResourceExhausted:  {"resource_exhausted", codes.ResourceExhausted, http.StatusTooManyRequests, "too many requests, retry later"},
	Unavailable:        {"unavailable", codes.Unavailable, http.StatusServiceUnavailable, "service unavailable, retry later"},
	FailedPrecondition: {"failed_precondition", codes.FailedPrecondition, http.StatusBadRequest, "failed precondition"},
	TooLarge:           {"too_large", codes.InvalidArgument, http.StatusRequestEntityTooLarge, "request too large"},
	Internal:           {"internal", codes.Internal, http.StatusInternalServerError, "internal error"},
}

func info(c Code) codeInfo {
	if i, ok := table[c]; ok {
		return i
	}
	return table[Internal]
}

// String returns the code's snake_case name.
func (c Code) String() string { return info(c).name }

// GRPCCode returns the gRPC code c maps to.
func (c Code) GRPCCode() codes.Code { return info(c).grpc }

// HTTPStatus returns the HTTP status for code, for the gateway's own handlers.
func HTTPStatus(code Code) int { return info(code).http }

// DefaultRetryAfter is the retry delay sent with ResourceExhausted and
// Unavailable when the error does not set one.
const DefaultRetryAfter = time.Second

// Error is an application error.
type Error struct {
	Code Code
	// Reason is a stable snake_case reason such as "invalid_signature";
	// clients and tests may branch on it.
	Reason string
	// Message is safe to show to clients: no PHI, no internals.
	Message string
	// RetryAfter tells clients when to retry (ResourceExhausted, Unavailable).
	RetryAfter time.Duration
	// Err is the cause; it is logged but never sent to clients.
	Err error
}

// E returns a new error without a cause.
func E(code Code, reason, message string) *Error {
	return &Error{Code: code, Reason: reason, Message: message}
}

// Wrap returns a new error with cause err.
func Wrap(err error, code Code, reason, message string) *Error {
	return &Error{Code: code, Reason: reason, Message: message, Err: err}
}

// WithRetryAfter sets RetryAfter and returns e.
func (e *Error) WithRetryAfter(d time.Duration) *Error {
	e.RetryAfter = d
	return e
}

// Error includes the cause, so it is for logs, not for clients.
func (e *Error) Error() string {
	s := e.Code.String() + ": " + e.reason()
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func (e *Error) reason() string {
	if e.Reason != "" {
		return e.Reason
	}
	return e.Code.String()
}

func (e *Error) message() string {
	if e.Message != "" {
		return e.Message
	}
	return info(e.Code).msg
}

// CodeOf returns the Code of the first *Error in err's chain, or Internal.
func CodeOf(err error) Code {
	var ae *Error
	if errors.As(err, &ae) {
		if _, ok := table[ae.Code]; ok {
			return ae.Code
		}
	}
	return Internal
}

// ReasonOf returns the Reason of the first *Error in err's chain, or "".
func ReasonOf(err error) string {
	var ae *Error
	if errors.As(err, &ae) {
		return ae.reason()
	}
	return ""
}

// ToStatus maps err to the status sent to the client.
//
//   - *Error (anywhere in the chain): its code's gRPC code and safe message,
//     with a google.rpc.ErrorInfo detail (Reason, Domain "biobridge",
//     metadata "code") and, for ResourceExhausted and Unavailable, a
//     google.rpc.RetryInfo detail.
//   - context.Canceled / context.DeadlineExceeded: Canceled / DeadlineExceeded.
//   - an error carrying a gRPC status (for example from a downstream call):
//     that status unchanged, without any local wrapping text.
//   - anything else: Internal "internal error".
//
// unknown reports that the error was unexpected (an unmapped error, an
// Internal *Error, or a passed-through Internal/Unknown/DataLoss status)
// and should be logged with its cause by the caller.
func ToStatus(err error) (st *status.Status, unknown bool) {
	if err == nil {
		return status.New(codes.OK, ""), false
	}
	var ae *Error
	if errors.As(err, &ae) {
		return appStatus(ae), info(ae.Code).grpc == codes.Internal
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		st := se.GRPCStatus()
		switch st.Code() {
		case codes.Internal, codes.Unknown, codes.DataLoss:
			return st, true
		}
		return st, false
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "request canceled"), false
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, "deadline exceeded"), false
	}
	return status.New(codes.Internal, "internal error"), true
}

func appStatus(e *Error) *status.Status {
	ci := info(e.Code)
	code := e.Code
	if _, ok := table[code]; !ok {
		code = Internal
	}
	st := status.New(ci.grpc, e.message())
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{
		Reason:   e.reason(),
		Domain:   Domain,
		Metadata: map[string]string{"code": code.String()},
	}}
	if ci.grpc == codes.ResourceExhausted || ci.grpc == codes.Unavailable {
		d := e.RetryAfter
		if d <= 0 {
			d = DefaultRetryAfter
		}
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
	}
	withDetails, err := st.WithDetails(details...)
	if err != nil {
		// Only fails for an OK status, which ci.grpc never is.
		return st
	}
	return withDetails
}

// CodeFromStatus recovers the application Code from a status produced by
// ToStatus (from its ErrorInfo), so the gateway can answer 413 for TooLarge
// although gRPC carries it as InvalidArgument.
func CodeFromStatus(st *status.Status) (Code, bool) {
	for _, d := range st.Details() {
		ei, ok := d.(*errdetails.ErrorInfo)
		if !ok || ei.GetDomain() != Domain {
			continue
		}
		name := ei.GetMetadata()["code"]
		for c, i := range table {
			if i.name == name {
				return c, true
			}
		}
	}
	return 0, false
}

// ReasonFromStatus returns the ErrorInfo reason of a status from ToStatus.
func ReasonFromStatus(st *status.Status) string {
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == Domain {
			return ei.GetReason()
		}
	}
	return ""
}

// RetryAfterFromStatus returns the RetryInfo delay of a status, if any, for
// example to set an HTTP Retry-After header.
func RetryAfterFromStatus(st *status.Status) (time.Duration, bool) {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// RetryAfterSeconds formats d as whole seconds for a Retry-After header,
// rounding up so a client never retries early.
func RetryAfterSeconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return strconv.FormatInt(s, 10)
}
