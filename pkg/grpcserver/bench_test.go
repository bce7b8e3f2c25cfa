package grpcserver_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/grpcserver"
)

// BenchmarkUnaryCall: a small unary call through the whole server chain
// (request id, metrics, error mapping, recovery, service-token auth) over
// loopback, from a plain client with per-RPC credentials, as
// persistence-bench calls GetLatest; no tracer provider (a bench or test
// process). Read allocs/op and the CPU per call; wall time depends on the
// machine's load.
func BenchmarkUnaryCall(b *testing.B) {
	srv, err := grpcserver.New(grpcserver.Config{Addr: "127.0.0.1:0"}, grpcserver.Options{
		Service: "bench", Registry: prometheus.NewRegistry(), Auth: tokenAuth,
	})
	if err != nil {
		b.Fatal(err)
	}
	testpb.RegisterTestServiceServer(srv.Registrar(), &testService{release: make(chan struct{})})
	if err := srv.Listen(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(grpcclient.ServiceCredentials(goodToken)))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	client := testpb.NewTestServiceClient(conn)
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("ok")}}
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := client.UnaryCall(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
