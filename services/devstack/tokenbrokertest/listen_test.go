package tokenbrokertest

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
	"github.com/biobridge/bridge/services/tokenbroker/server"
)

// TestFailedStartReleasesGRPCPort: when New fails because the admin port
// is taken, the gRPC port it had already bound is given back.
func TestFailedStartReleasesGRPCPort(t *testing.T) {
	t.Parallel()
	e := newEnv(t, emulator.Config{})
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = taken.Close() })
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	grpcAddr := probe.Addr().String()
	require.NoError(t, probe.Close())

	cfg := e.config()
	cfg.GRPCAddr, cfg.AdminAddr = grpcAddr, taken.Addr().String()
	_, err = server.New(context.Background(), cfg, nil)
	require.Error(t, err)
	ln, err := net.Listen("tcp", grpcAddr)
	require.NoError(t, err, "the gRPC port is still bound after the failed start")
	require.NoError(t, ln.Close())
}
