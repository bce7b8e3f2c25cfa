// Command persistence runs the persistence service (PersistenceService and
// BiometricsService). `persistence healthcheck` probes a running instance.
package main

import (
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/persistence/server"
)

func main() { service.Exec(spec) }

// spec is the binary: its name, configuration and run function.
var spec = service.Spec[server.Config]{
	Name:       server.ServiceName,
	Load:       server.LoadConfig,
	Run:        server.Run,
	HealthAddr: func(cfg server.Config) string { return cfg.GRPCAddr },
}
