package grpcserver_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/grpcserver"
	"github.com/biobridge/bridge/pkg/logging"
)

// TestAccessLog: at debug level every call, successful or not, gets a
// line with its method, code and duration.
func TestAccessLog(t *testing.T) {
	t.Parallel()
	f := start(t, grpcserver.Config{})
	conn := dial(t, f.srv.Addr(), grpcclient.Config{})
	ctx := context.Background()

	_, err := call(logging.WithRequestID(authed(ctx), "req-access-ok"), conn, "ok")
	require.NoError(t, err)
	_, err = call(logging.WithRequestID(authed(ctx), "req-access-nf"), conn, "notfound")
	require.Error(t, err)

	for id, code := range map[string]string{"req-access-ok": "OK", "req-access-nf": "NotFound"} {
		line := logLine(t, f.logs.String(), id, "duration_ms")
		assert.Contains(t, line, "/grpc.testing.TestService/UnaryCall")
		assert.Contains(t, line, `"code":"`+code+`"`)
	}
}
