package stack

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/testpg"
	ingest "github.com/biobridge/bridge/services/ingest/server"
	persistence "github.com/biobridge/bridge/services/persistence/server"
)

// TestComponentsHooksAndRestart: a stack of some components runs those and
// no other; the hooks shape each service's configuration; a service left
// out starts later through Restart, pointed at the running ones' real
// addresses; a restarted service listens where it listened before.
func TestComponentsHooksAndRestart(t *testing.T) {
	t.Parallel()
	dbURL := testpg.New(t, "stack-components-empty", func(context.Context, string) error { return nil })
	redisURL, prefix := testpg.NewRedis(t)
	env := map[string]string{"POSTGRES_URL": dbURL, "REDIS_URL": redisURL, "REDIS_KEY_PREFIX": prefix}
	s, err := Start(context.Background(), Options{
		Getenv:     func(k string) string { return env[k] },
		Ephemeral:  true,
		Components: []Component{Persistence},
		Configure: Hooks{
			Persistence: func(c *persistence.Config) { c.OutboxPollInterval = 50 * time.Millisecond },
			Ingest:      func(c *ingest.Config) { c.Workers = 1 },
		},
	})
	require.NoError(t, err)
	stop := s.Run(context.Background())
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = stop()
		}
	})

	require.NotNil(t, s.Persistence())
	assert.Nil(t, s.Ingest(), "ingest was left out")
	assert.Nil(t, s.Gateway(), "the gateway was left out")
	assert.Nil(t, s.Emulator, "the emulator was left out")
	assert.Nil(t, s.Kafka(), "Kafka was left out")
	assert.Equal(t, 50*time.Millisecond, s.Configs().Persistence.OutboxPollInterval, "the hook ran")
	persistenceAddr := s.Persistence().GRPCAddr()
	assert.Equal(t, persistenceAddr, s.Env("PERSISTENCE_GRPC_ADDR"), "the real address is the one the stack reports")

	// Ingest, started late, is given persistence's real address.
	require.NoError(t, s.Restart(context.Background(), Ingest, Hooks{}))
	require.NotNil(t, s.Ingest())
	cfg := s.Configs().Ingest
	assert.Equal(t, persistenceAddr, cfg.PersistenceTarget)
	assert.Equal(t, 1, cfg.Workers, "Options.Configure's hook ran")
	ingestAddr := s.Ingest().GRPCAddr()
	ready(t, "http://"+s.Ingest().AdminAddr()+"/healthz")

	// A restart with an extra hook: same address, both hooks applied.
	first := s.Ingest()
	require.NoError(t, s.Restart(context.Background(), Ingest, Hooks{Ingest: func(c *ingest.Config) { c.JobMaxAttempts = 3 }}))
	assert.NotSame(t, first, s.Ingest(), "a new server")
	assert.Equal(t, ingestAddr, s.Ingest().GRPCAddr(), "it listens where it listened")
	assert.Equal(t, 3, s.Configs().Ingest.JobMaxAttempts)
	assert.Equal(t, 1, s.Configs().Ingest.Workers)
	ready(t, "http://"+s.Ingest().AdminAddr()+"/healthz")

	require.NoError(t, s.Stop(Ingest))
	assert.Nil(t, s.Ingest())
	stopped = true
	require.NoError(t, stop())
}

func ready(t *testing.T, url string) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 20*time.Second, 20*time.Millisecond, "%s never answered", url)
}
