package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/biobridge/bridge/pkg/testpg"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// TestBinaryServesReflectionAndStopsOnSIGTERM runs the real devstack binary
// the way `make run` does: every gRPC port answers reflection (what grpcurl
// uses), and SIGTERM stops the whole suite with exit code 0 within seconds.
func TestBinaryServesReflectionAndStopsOnSIGTERM(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "devstack")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	require.NoError(t, build.Run(), "build devstack")

	dbURL := testpg.New(t, "devstack-bin-empty", func(context.Context, string) error { return nil })
	redisURL, prefix := testpg.NewRedis(t)
	grpcAddrs := map[string]string{}
	env := append(os.Environ(), "POSTGRES_URL="+dbURL, "REDIS_URL="+redisURL, "REDIS_KEY_PREFIX="+prefix, "LOG_LEVEL=warn")
	for _, v := range []string{"GATEWAY_HTTP_ADDR", "GATEWAY_ADMIN_ADDR", "INGEST_ADMIN_ADDR", "TOKENBROKER_ADMIN_ADDR",
		"PERSISTENCE_ADMIN_ADDR", "PUBLISHER_ADMIN_ADDR", "EMULATOR_ADDR", "KAFKA_ADDR"} {
		env = append(env, v+"="+freeAddr(t))
	}
	for _, svc := range []string{"INGEST", "TOKENBROKER", "PERSISTENCE", "PUBLISHER"} {
		grpcAddrs[svc] = freeAddr(t)
		env = append(env, svc+"_GRPC_ADDR="+grpcAddrs[svc])
	}
	cmd := exec.Command(bin, "-data-dir", t.TempDir())
	cmd.Env = env
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	banner := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		closed := false
		for sc.Scan() {
			if !closed && strings.Contains(sc.Text(), "Try it") {
				close(banner)
				closed = true
			}
		}
	}()
	select {
	case <-banner:
	case <-time.After(60 * time.Second):
		t.Fatal("devstack printed no banner within 60s")
	}

	for svc, addr := range grpcAddrs {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		require.NoError(t, err)
		require.NoError(t, stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}))
		resp, err := stream.Recv()
		require.NoError(t, err, "%s reflection", svc)
		var names []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		cancel()
		require.NoError(t, conn.Close())
		require.Contains(t, names, "grpc.health.v1.Health", "%s lists health", svc)
		require.Contains(t, strings.Join(names, " "), "biobridge.", "%s lists its own API: %v", svc, names)
	}

	start := time.Now()
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "devstack exits 0 on SIGTERM")
		t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("devstack did not stop within 20s of SIGTERM")
	}
}

// TestInvalidConfigurationNamesEveryVariable: a service binary started with
// bad settings exits non-zero and names every invalid variable in one message.
func TestInvalidConfigurationNamesEveryVariable(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"MAX_CONCURRENT_WEBHOOKS": "0",
		"GATEWAY_MAX_BODY_BYTES":  "12",
		"LOG_FORMAT":              "xml",
	}
	err := run(context.Background(), []string{"devstack"}, func(k string) string { return env[k] }, &strings.Builder{})
	require.Error(t, err)
	for _, name := range []string{"MAX_CONCURRENT_WEBHOOKS", "GATEWAY_MAX_BODY_BYTES", "LOG_FORMAT"} {
		require.Contains(t, err.Error(), name, fmt.Sprintf("error names %s", name))
	}
}
