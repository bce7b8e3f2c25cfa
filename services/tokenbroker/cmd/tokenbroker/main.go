// Command tokenbroker runs the token broker: vendor OAuth connections with
// encrypted storage and rotation-safe refresh.
package main

import (
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/tokenbroker/server"
)

func main() { service.Exec(spec) }

// spec is the binary: its name, configuration and run function.
var spec = service.Spec[server.Config]{
	Name:       "tokenbroker",
	Load:       server.LoadConfig,
	Run:        server.Run,
	HealthAddr: func(c server.Config) string { return c.GRPCAddr },
}
