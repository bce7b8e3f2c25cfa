package webhooks

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator/internal/store"
)

func TestHandshakeSendsTokenAndChallengeAndWantsTheChallengeBack(t *testing.T) {
	t.Parallel()
	echo := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Query().Get("verification_token") != "tok" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		c := r.URL.Query().Get("challenge")
		if !echo {
			c = "something else"
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"challenge":"` + c + `"}`))
	}))
	defer srv.Close()
	counters := store.NewCounterSet()
	ctx := context.Background()

	require.NoError(t, Handshake(ctx, srv.Client(), 5*time.Second, counters, srv.URL+"/cb?keep=1", "tok", "ch-1"))
	require.ErrorContains(t, Handshake(ctx, srv.Client(), 5*time.Second, counters, srv.URL, "wrong", "ch-2"), "answered 401")
	echo = false
	require.ErrorContains(t, Handshake(ctx, srv.Client(), 5*time.Second, counters, srv.URL, "tok", "ch-3"), "wrong challenge")

	c := counters.Snapshot().Oura
	require.EqualValues(t, 3, c.Handshakes)
	require.EqualValues(t, 1, c.HandshakesPassed)
}
