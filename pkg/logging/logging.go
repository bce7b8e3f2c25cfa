// Package logging builds the project's slog loggers with PHI protection
// built into the handler rather than left to every call site.
//
// User ids are logged only through UserID, whose value the handler replaces
// with a keyed pseudonym (HMAC-SHA256 with LOG_PSEUDONYM_KEY): a plain hash of
// an id would be enumerable, while the keyed one still lets an operator follow
// one user's requests across services. Values that are PHI (biometric values,
// tokens) go through PHI, which never renders the value at all.
//
// The handler also copies request_id, trace_id and span_id from the context
// passed to the *Context log methods, so logs join up with traces.
package logging

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/trace"
)

// UserKey is the attribute key under which user pseudonyms appear.
const UserKey = "user"

// Redacted is what a PHI value is rendered as.
const Redacted = "[redacted]"

// Options configures New.
type Options struct {
	// Format is "json" (the default, for production) or "text".
	Format string
	// Level is the minimum level logged (default Info, the zero value).
	Level slog.Level
	// PseudonymKey keys the user id HMAC. When empty, a random per-process
	// key is used: ids stay hidden, but pseudonyms then differ between
	// processes and restarts.
	PseudonymKey []byte
	// Service, when set, is added to every record as "service".
	Service string
}

// New returns a logger writing to w that pseudonymizes user ids, redacts
// PHI and adds request and trace ids from the context.
func New(w io.Writer, opts Options) *slog.Logger {
	p := NewPseudonymizer(opts.PseudonymKey)
	hopts := &slog.HandlerOptions{
		Level:       opts.Level,
		ReplaceAttr: p.replaceAttr,
	}
	var inner slog.Handler
	if strings.EqualFold(opts.Format, "text") {
		inner = slog.NewTextHandler(w, hopts)
	} else {
		inner = slog.NewJSONHandler(w, hopts)
	}
	logger := slog.New(newContextHandler(inner))
	if opts.Service != "" {
		logger = logger.With(slog.String("service", opts.Service))
	}
	return logger
}

// Pseudonymizer turns user ids into stable, non-reversible pseudonyms.
type Pseudonymizer struct {
	key []byte
}

// NewPseudonymizer returns a Pseudonymizer keyed with key; an empty key is
// replaced with 32 random bytes (see Options.PseudonymKey).
func NewPseudonymizer(key []byte) *Pseudonymizer {
	if len(key) == 0 {
		key = make([]byte, 32)
		// crypto/rand.Read never returns an error on supported platforms.
		_, _ = rand.Read(key)
	}
	return &Pseudonymizer{key: append([]byte(nil), key...)}
}

// Pseudonym returns "u_" followed by the first 16 hex characters of
// HMAC-SHA256(key, id). 64 bits keep collisions negligible for any realistic
// user count while staying short enough to read in a log line.
func (p *Pseudonymizer) Pseudonym(id string) string {
	m := hmac.New(sha256.New, p.key)
	m.Write([]byte(id))
	return "u_" + hex.EncodeToString(m.Sum(nil))[:16]
}

// userValue carries a raw user id to the handler. Its String and
// MarshalJSON never reveal the id, so even a handler that is not ours (which
// would not pseudonymize) cannot leak it.
type userValue struct{ id string }

func (userValue) String() string { return "[user]" }

func (userValue) MarshalJSON() ([]byte, error) { return []byte(`"[user]"`), nil }

func (userValue) MarshalText() ([]byte, error) { return []byte("[user]"), nil }

// UserID returns the "user" attribute for a user id. The logger from New
// renders it as the keyed pseudonym, inside groups and in Logger.With too.
func UserID(id string) slog.Attr {
	return slog.Any(UserKey, userValue{id: id})
}

// PHI returns an attribute whose value is always rendered as "[redacted]".
// The value is dropped here, not in the handler, so no handler, sink or
// later refactoring can ever print it; the call marks the site as PHI.
func PHI(key string, _ any) slog.Attr {
	return slog.String(key, Redacted)
}

// replaceAttr pseudonymizes user ids. A plain string under the "user" key is
// pseudonymized too: a call site that forgot UserID still does not leak.
func (p *Pseudonymizer) replaceAttr(_ []string, a slog.Attr) slog.Attr {
	if a.Key != UserKey {
		return a
	}
	switch v := a.Value.Any().(type) {
	case userValue:
		return slog.String(UserKey, p.Pseudonym(v.id))
	case string:
		return slog.String(UserKey, p.Pseudonym(v))
	}
	return a
}

type requestIDKey struct{}

// WithRequestID returns ctx carrying the request id id.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID returns the request id in ctx, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// contextHandler adds request and trace ids from the record's context at
// the top level of the record, even below Logger.WithGroup: it keeps the
// group-free handler and replays the group operations when it must add them.
type contextHandler struct {
	base slog.Handler // no open groups
	ops  []handlerOp  // WithGroup/WithAttrs calls since the first group
	cur  slog.Handler // base with ops applied
}

type handlerOp struct {
	group string
	attrs []slog.Attr
}

func newContextHandler(inner slog.Handler) *contextHandler {
	return &contextHandler{base: inner, cur: inner}
}

func (h *contextHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.cur.Enabled(ctx, l)
}

func (h *contextHandler) Handle(ctx context.Context, r slog.Record) error {
	var ids []slog.Attr
	if ctx != nil {
		if id := RequestID(ctx); id != "" {
			ids = append(ids, slog.String("request_id", id))
		}
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			ids = append(ids,
				slog.String("trace_id", sc.TraceID().String()),
				slog.String("span_id", sc.SpanID().String()),
			)
		}
	}
	if len(ids) == 0 {
		return h.cur.Handle(ctx, r)
	}
	if len(h.ops) == 0 {
		r.AddAttrs(ids...)
		return h.cur.Handle(ctx, r)
	}
	hh := h.base.WithAttrs(ids)
	for _, op := range h.ops {
		hh = op.apply(hh)
	}
	return hh.Handle(ctx, r)
}

func (op handlerOp) apply(h slog.Handler) slog.Handler {
	if op.group != "" {
		return h.WithGroup(op.group)
	}
	return h.WithAttrs(op.attrs)
}

func (h *contextHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(h.ops) == 0 {
		return newContextHandler(h.base.WithAttrs(attrs))
	}
	return h.with(handlerOp{attrs: attrs})
}

func (h *contextHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return h.with(handlerOp{group: name})
}

func (h *contextHandler) with(op handlerOp) *contextHandler {
	return &contextHandler{
		base: h.base,
		ops:  append(h.ops[:len(h.ops):len(h.ops)], op),
		cur:  op.apply(h.cur),
	}
}
