// Command gateway runs the HTTP edge: REST routes to the services' gRPC APIs
// and the vendor webhook routes.
package main

import (
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/gateway/server"
)

func main() { service.Exec(spec) }

// spec is the binary: its name, configuration and run function.
var spec = service.Spec[server.Config]{
	Name:  "gateway",
	Load:  server.LoadConfig,
	Run:   server.Run,
	Probe: server.Probe,
}
