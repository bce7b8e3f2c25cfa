package tokenbrokertest

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/logging"
)

// syncBuffer is a bytes.Buffer safe for the logger's writes and the test's read.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestLogsCarryNoTokensOrUserIDs runs connect, refresh, a broken grant and
// a revoke at debug level and searches the logs for tokens and raw user ids.
func TestLogsCarryNoTokensOrUserIDs(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	var logs syncBuffer
	logger := logging.New(io.MultiWriter(&logs, t.Output()), logging.Options{Format: "json", Level: slog.LevelDebug, PseudonymKey: []byte("0123456789abcdef"), Service: "tokenbroker"})
	in := e.startLogged(e.config(), logger)
	const user = "patient-4711"

	connect(t, in, user, "whoop", "alice")
	first, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: user, Vendor: "whoop"})
	require.NoError(t, err)
	e.expire(t, user, "whoop")
	second, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: user, Vendor: "whoop"})
	require.NoError(t, err)
	e.expire(t, user, "whoop")
	e.emu.RevokeGrants(emulator.Whoop, "alice")
	_, err = in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: user, Vendor: "whoop"})
	require.Error(t, err)
	_, err = in.client.RevokeConnection(userCtx(t, user), &tokensv1.RevokeConnectionRequest{Vendor: "whoop"})
	require.NoError(t, err)
	in.stop()

	out := logs.String()
	require.Contains(t, out, "connection marked broken", "the broken grant was logged")
	require.Contains(t, out, logging.NewPseudonymizer([]byte("0123456789abcdef")).Pseudonym(user), "users appear as pseudonyms")
	for _, secret := range []string{user, first.GetAccessToken(), second.GetAccessToken()} {
		require.False(t, strings.Contains(out, secret), "logs must not contain %q", secret)
	}
}

// TestAdminEndpoints: readiness checks the stores, metrics carry the
// broker's series.
func TestAdminEndpoints(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	connect(t, in, "user-1", "whoop", "alice")
	_, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
	require.NoError(t, err)

	res, err := http.Get("http://" + in.srv.AdminAddr() + "/readyz")
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	require.Equal(t, http.StatusOK, res.StatusCode)

	res, err = http.Get("http://" + in.srv.AdminAddr() + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	require.Contains(t, string(body), `biobridge_tokenbroker_cache_hits_total{vendor="whoop"} 1`)
	require.NotContains(t, string(body), "user-1", "no user ids in metrics")
}
