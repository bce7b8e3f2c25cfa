package stack

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/biobridge/bridge/emulator"
	gateway "github.com/biobridge/bridge/services/gateway/server"
	ingest "github.com/biobridge/bridge/services/ingest/server"
	persistence "github.com/biobridge/bridge/services/persistence/server"
	publisher "github.com/biobridge/bridge/services/publisher/server"
	tokenbroker "github.com/biobridge/bridge/services/tokenbroker/server"
)

// readVariables returns, per service, every environment variable its
// LoadConfig reads, by running it with a recording getenv.
func readVariables() map[string][]string {
	record := func(load func(func(string) string)) []string {
		seen := map[string]bool{}
		load(func(k string) string { seen[k] = true; return "" })
		names := make([]string, 0, len(seen))
		for k := range seen {
			names = append(names, k)
		}
		sort.Strings(names)
		return names
	}
	return map[string][]string{
		"gateway":     record(func(g func(string) string) { _, _ = gateway.LoadConfig(g) }),
		"ingest":      record(func(g func(string) string) { _, _ = ingest.LoadConfig(g) }),
		"persistence": record(func(g func(string) string) { _, _ = persistence.LoadConfig(g) }),
		"publisher":   record(func(g func(string) string) { _, _ = publisher.LoadConfig(g) }),
		"tokenbroker": record(func(g func(string) string) { _, _ = tokenbroker.LoadConfig(g) }),
		"vendoremu":   record(func(g func(string) string) { _, _ = emulator.ConfigFromEnv(g) }),
	}
}

// TestConfigurationReferenceIsComplete keeps docs/configuration.md in sync
// with the code: every variable a service reads must be documented there.
func TestConfigurationReferenceIsComplete(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "configuration.md"))
	if err != nil {
		t.Fatalf("read the configuration reference: %v", err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("`([A-Z][A-Z0-9_]+)`").FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = true
	}
	for svc, names := range readVariables() {
		for _, name := range names {
			if !documented[name] {
				t.Errorf("%s reads %s, which docs/configuration.md does not document", svc, name)
			}
		}
	}
}

// TestDumpVariables prints what each service reads (go test -run Dump -v)
// when the reference needs updating.
func TestDumpVariables(t *testing.T) {
	t.Parallel()
	for svc, names := range readVariables() {
		t.Logf("%s: %s", svc, strings.Join(names, " "))
	}
}
