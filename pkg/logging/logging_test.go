package logging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"

	"github.com/biobridge/bridge/pkg/logging"
)

const rawUser = "user-8f14e45f-raw-id"

var key = []byte("0123456789abcdef0123456789abcdef")

func decode(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		out = append(out, m)
	}
	return out
}

func TestPseudonym(t *testing.T) {
	t.Parallel()
	p := logging.NewPseudonymizer(key)
	got := p.Pseudonym(rawUser)
	assert.Regexp(t, `^u_[0-9a-f]{16}$`, got)
	assert.Equal(t, got, logging.NewPseudonymizer(key).Pseudonym(rawUser), "stable for one key")
	assert.NotEqual(t, got, p.Pseudonym("another-user"))
	assert.NotEqual(t, got, logging.NewPseudonymizer([]byte("other key")).Pseudonym(rawUser), "keyed")
	assert.NotEqual(t, logging.NewPseudonymizer(nil).Pseudonym(rawUser), logging.NewPseudonymizer(nil).Pseudonym(rawUser),
		"an empty key is replaced by a random one")
}

// TestRequestLogHidesPHI is the property the whole package exists for: a
// request's log line carries the pseudonym, request and trace ids, but
// neither the raw user id nor any PHI value.
func TestRequestLogHidesPHI(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			logger := logging.New(&buf, logging.Options{Format: format, PseudonymKey: key, Service: "ingest", Level: slog.LevelDebug})

			traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
			spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
			ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled,
			}))
			ctx = logging.WithRequestID(ctx, "req-123")

			reqLogger := logger.With(logging.UserID(rawUser))
			reqLogger.InfoContext(ctx, "readings accepted",
				logging.PHI("heart_rate", 71.5),
				logging.PHI("access_token", "tok-SECRET-9"),
				slog.Group("batch", logging.UserID(rawUser), slog.Int("count", 3)),
				slog.String("user", rawUser), // a careless call site
			)

			out := buf.String()
			pseudo := logging.NewPseudonymizer(key).Pseudonym(rawUser)
			assert.NotContains(t, out, rawUser)
			assert.NotContains(t, out, "71.5")
			assert.NotContains(t, out, "tok-SECRET-9")
			assert.Contains(t, out, pseudo)
			assert.Contains(t, out, "[redacted]")
			assert.Contains(t, out, "req-123")
			assert.Contains(t, out, "4bf92f3577b34da6a3ce929d0e0e4736")
			assert.Contains(t, out, "00f067aa0ba902b7")
			assert.Contains(t, out, "ingest")
		})
	}
}

func TestJSONShape(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	logger := logging.New(&buf, logging.Options{PseudonymKey: key, Service: "persistence"})
	ctx := logging.WithRequestID(context.Background(), "req-9")
	logger.InfoContext(ctx, "read latest", logging.UserID(rawUser), slog.Group("g", logging.UserID(rawUser)))
	logger.Info("no context ids")
	logger.Debug("below level")

	lines := decode(t, &buf)
	require.Len(t, lines, 2)
	pseudo := logging.NewPseudonymizer(key).Pseudonym(rawUser)
	assert.Equal(t, pseudo, lines[0]["user"])
	assert.Equal(t, pseudo, lines[0]["g"].(map[string]any)["user"])
	assert.Equal(t, "req-9", lines[0]["request_id"])
	assert.Equal(t, "persistence", lines[0]["service"])
	assert.NotContains(t, lines[1], "request_id")
	assert.NotContains(t, lines[1], "trace_id")
}

// A UserID attribute that reaches a handler not built by New still never
// prints the raw id.
func TestUserIDSafeInForeignHandler(t *testing.T) {
	t.Parallel()
	for name, h := range map[string]func(*bytes.Buffer) slog.Handler{
		"json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		"text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			slog.New(h(&buf)).Info("x", logging.UserID(rawUser))
			assert.NotContains(t, buf.String(), rawUser)
		})
	}
}

func TestRequestID(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "", logging.RequestID(context.Background()))
	assert.Equal(t, "abc", logging.RequestID(logging.WithRequestID(context.Background(), "abc")))
}

func TestContextIDsStayTopLevelUnderGroups(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	logger := logging.New(&buf, logging.Options{PseudonymKey: key}).
		With("a", 1).WithGroup("rpc").With("method", "/x.v1.S/M").WithGroup("inner")
	ctx := logging.WithRequestID(context.Background(), "req-g")
	logger.InfoContext(ctx, "grouped", "k", "v", logging.UserID(rawUser))
	logger.Info("grouped without ids", "k", "v")

	lines := decode(t, &buf)
	require.Len(t, lines, 2)
	assert.Equal(t, "req-g", lines[0]["request_id"], "top level, not inside rpc.inner")
	assert.EqualValues(t, 1, lines[0]["a"])
	rpc := lines[0]["rpc"].(map[string]any)
	assert.Equal(t, "/x.v1.S/M", rpc["method"])
	inner := rpc["inner"].(map[string]any)
	assert.Equal(t, "v", inner["k"])
	assert.Equal(t, logging.NewPseudonymizer(key).Pseudonym(rawUser), inner["user"])
	assert.NotContains(t, buf.String(), rawUser)
	assert.Equal(t, "v", lines[1]["rpc"].(map[string]any)["inner"].(map[string]any)["k"])
}
