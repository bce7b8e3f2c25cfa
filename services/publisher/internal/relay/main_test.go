package relay_test

import (
	"os"
	"testing"

	"github.com/biobridge/bridge/services/publisher/testenv"
)

// TestMain removes the persistence binary the tests build.
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBinaries()
	os.Exit(code)
}
