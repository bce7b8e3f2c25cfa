// Command publisher relays the transactional outbox to Kafka and serves
// PublisherService. Configuration comes from the environment (see
// server.Config). `publisher healthcheck` probes a running instance's gRPC
// health, for container health checks.
package main

import (
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/publisher/server"
)

func main() { service.Exec(spec) }

// spec is the binary: its name, configuration and run function.
var spec = service.Spec[server.Config]{
	Name:       "publisher",
	Load:       server.LoadConfig,
	Run:        server.Run,
	HealthAddr: func(c server.Config) string { return c.GRPCAddr },
}
