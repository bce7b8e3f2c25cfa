package server_test

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/persistence/server"
)

// TestFailedStartReleasesGRPCPort: when New fails because the admin port
// is taken, the gRPC port it had already bound is given back. Otherwise a
// process that retries the start (devstack, a supervisor in-process) finds
// its own port in use for as long as it lives.
func TestFailedStartReleasesGRPCPort(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = taken.Close() })
	grpcAddr := freeAddr(t)
	redisURL, prefix := testpg.NewRedis(t)
	_, err = server.New(context.Background(), server.Config{
		GRPCAddr:       grpcAddr,
		AdminAddr:      taken.Addr().String(),
		PostgresURL:    newDatabase(t),
		RedisURL:       redisURL,
		RedisKeyPrefix: prefix,
		ServiceTokens:  "ingest:" + ingestToken,
	}, testLogger(t))
	require.Error(t, err)
	ln, err := net.Listen("tcp", grpcAddr)
	require.NoError(t, err, "the gRPC port is still bound after the failed start")
	require.NoError(t, ln.Close())
}

// freeAddr returns a loopback address no one listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}
