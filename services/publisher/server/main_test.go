package server_test

import (
	"os"
	"testing"

	"github.com/biobridge/bridge/services/publisher/testenv"
)

// TestMain removes the binaries the tests build (the publisher, persistence).
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBinaries()
	os.Exit(code)
}
