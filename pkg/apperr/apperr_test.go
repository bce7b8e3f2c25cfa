package apperr_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/biobridge/bridge/pkg/apperr"
)

func TestToStatus(t *testing.T) {
	t.Parallel()
	cause := errors.New("pq: connection to 10.0.0.7 refused")
	tests := []struct {
		name        string
		err         error
		wantCode    codes.Code
		wantMsg     string
		wantReason  string
		wantRetry   time.Duration // 0: no RetryInfo
		wantUnknown bool
	}{
		{"invalid", apperr.E(apperr.Invalid, "malformed_body", "body is not JSON"), codes.InvalidArgument, "body is not JSON", "malformed_body", 0, false},
		{"not found wrapped", fmt.Errorf("get latest: %w", apperr.E(apperr.NotFound, "no_connection", "no connection for vendor")), codes.NotFound, "no connection for vendor", "no_connection", 0, false},
		{"already exists", apperr.E(apperr.AlreadyExists, "", ""), codes.AlreadyExists, "already exists", "already_exists", 0, false},
		{"unauthenticated", apperr.E(apperr.Unauthenticated, "invalid_signature", "invalid signature"), codes.Unauthenticated, "invalid signature", "invalid_signature", 0, false},
		{"permission denied", apperr.E(apperr.PermissionDenied, "wrong_user", "not your data"), codes.PermissionDenied, "not your data", "wrong_user", 0, false},
		{"resource exhausted default retry", apperr.E(apperr.ResourceExhausted, "overloaded", "busy"), codes.ResourceExhausted, "busy", "overloaded", time.Second, false},
		{"unavailable with retry", apperr.Wrap(cause, apperr.Unavailable, "vendor_down", "vendor unavailable").WithRetryAfter(30 * time.Second), codes.Unavailable, "vendor unavailable", "vendor_down", 30 * time.Second, false},
		{"failed precondition", apperr.E(apperr.FailedPrecondition, "connection_broken", "reconnect"), codes.FailedPrecondition, "reconnect", "connection_broken", 0, false},
		{"too large", apperr.E(apperr.TooLarge, "body_too_large", "body exceeds 1 MiB"), codes.InvalidArgument, "body exceeds 1 MiB", "body_too_large", 0, false},
		{"internal app error", apperr.Wrap(cause, apperr.Internal, "db", "internal error"), codes.Internal, "internal error", "db", 0, true},
		{"zero code is internal", &apperr.Error{Reason: "oops"}, codes.Internal, "internal error", "oops", 0, true},
		{"canceled", fmt.Errorf("query: %w", context.Canceled), codes.Canceled, "request canceled", "", 0, false},
		{"deadline", fmt.Errorf("query: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "deadline exceeded", "", 0, false},
		{"status passes through", status.Error(codes.NotFound, "downstream says no"), codes.NotFound, "downstream says no", "", 0, false},
		{"wrapped status keeps its own message", fmt.Errorf("call persistence for user 42: %w", status.Error(codes.PermissionDenied, "denied")), codes.PermissionDenied, "denied", "", 0, false},
		{"downstream internal is flagged", status.Error(codes.Internal, "internal error"), codes.Internal, "internal error", "", 0, true},
		{"unknown error", cause, codes.Internal, "internal error", "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st, unknown := apperr.ToStatus(tt.err)
			assert.Equal(t, tt.wantCode, st.Code())
			assert.Equal(t, tt.wantMsg, st.Message())
			assert.Equal(t, tt.wantUnknown, unknown)
			assert.NotContains(t, st.Message(), "10.0.0.7", "causes never reach clients")
			assert.Equal(t, tt.wantReason, apperr.ReasonFromStatus(st))
			retry, ok := apperr.RetryAfterFromStatus(st)
			assert.Equal(t, tt.wantRetry != 0, ok)
			assert.Equal(t, tt.wantRetry, retry)
			if tt.wantReason != "" {
				var ei *errdetails.ErrorInfo
				for _, d := range st.Details() {
					if e, ok := d.(*errdetails.ErrorInfo); ok {
						ei = e
					}
				}
				require.NotNil(t, ei)
				assert.Equal(t, "biobridge", ei.GetDomain())
			}
		})
	}
}

func TestToStatusNil(t *testing.T) {
	t.Parallel()
	st, unknown := apperr.ToStatus(nil)
	assert.Equal(t, codes.OK, st.Code())
	assert.False(t, unknown)
}

func TestCodeFromStatusRecoversTooLarge(t *testing.T) {
	t.Parallel()
	st, _ := apperr.ToStatus(apperr.E(apperr.TooLarge, "body_too_large", "too big"))
	// Round trip through the wire form, as a client would see it.
	st = status.Convert(st.Err())
	code, ok := apperr.CodeFromStatus(st)
	require.True(t, ok)
	assert.Equal(t, apperr.TooLarge, code)
	assert.Equal(t, http.StatusRequestEntityTooLarge, apperr.HTTPStatus(code))

	_, ok = apperr.CodeFromStatus(status.New(codes.InvalidArgument, "plain"))
	assert.False(t, ok)
}

func TestHTTPStatus(t *testing.T) {
	t.Parallel()
	tests := map[apperr.Code]int{
		apperr.Invalid:            400,
		apperr.NotFound:           404,
		apperr.AlreadyExists:      409,
		apperr.Unauthenticated:    401,
		apperr.PermissionDenied:   403,
		apperr.ResourceExhausted:  429,
		apperr.Unavailable:        503,
		apperr.FailedPrecondition: 400,
		apperr.TooLarge:           413,
		apperr.Internal:           500,
		apperr.Code(0):            500,
	}
	for code, want := range tests {
		assert.Equal(t, want, apperr.HTTPStatus(code), code.String())
	}
}

func TestErrorChain(t *testing.T) {
	t.Parallel()
	cause := errors.New("boom")
	err := fmt.Errorf("store: %w", apperr.Wrap(cause, apperr.Unavailable, "db_down", "try later"))
	assert.ErrorIs(t, err, cause)
	assert.Equal(t, apperr.Unavailable, apperr.CodeOf(err))
	assert.Equal(t, "db_down", apperr.ReasonOf(err))
	assert.Equal(t, apperr.Internal, apperr.CodeOf(cause))
	assert.Contains(t, err.Error(), "boom", "Error() keeps the cause for logs")
}

func TestRetryAfterSeconds(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "1", apperr.RetryAfterSeconds(0))
	assert.Equal(t, "1", apperr.RetryAfterSeconds(time.Second))
	assert.Equal(t, "2", apperr.RetryAfterSeconds(1100*time.Millisecond))
}
