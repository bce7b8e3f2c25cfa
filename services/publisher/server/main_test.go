package server_test

import (
	"os"
	"testing"

	"github.com/biobridge/bridge/services/publisher/internal/testenv"
)

// TestMain removes the publisher binary the process tests build.
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemovePublisherBinary()
	os.Exit(code)
}
