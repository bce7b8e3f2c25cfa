// Command printversion prints buildinfo.Version(); the package's test builds
// it with the same -X flag the release builds use.
package main

import (
	"fmt"

	"github.com/biobridge/bridge/pkg/buildinfo"
)

func main() { fmt.Println(buildinfo.Version()) }
