package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/biobridge/bridge/pkg/service"
)

// TestInvalidConfigurationIsReportedAtOnce: the binary refuses to start with
// a bad environment and names every invalid variable in one error.
func TestInvalidConfigurationIsReportedAtOnce(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"GATEWAY_MAX_BODY_BYTES":  "12",
		"GATEWAY_REQUEST_TIMEOUT": "soon",
		"LOG_LEVEL":               "loud",
	}
	var out bytes.Buffer
	err := service.Main(context.Background(), []string{"gateway"}, func(k string) string { return env[k] }, &out, spec)
	if err == nil {
		t.Fatal("gateway started with an invalid configuration")
	}
	for _, name := range []string{"GATEWAY_MAX_BODY_BYTES", "GATEWAY_REQUEST_TIMEOUT", "LOG_LEVEL", "LOG_PSEUDONYM_KEY"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s:\n%v", name, err)
		}
	}
}
