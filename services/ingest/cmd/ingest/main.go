// Command ingest runs the ingest service: vendor webhooks, HealthKit pushes
// and internal event ingestion.
package main

import (
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/ingest/server"
)

func main() { service.Exec(spec) }

// spec is the binary: its name, configuration and run function.
var spec = service.Spec[server.Config]{
	Name:       "ingest",
	Load:       server.LoadConfig,
	Run:        server.Run,
	HealthAddr: func(c server.Config) string { return c.GRPCAddr },
}
