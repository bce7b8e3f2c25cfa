// Package acl checks the SERVICE_ACL values deploy/ ships: the callers that
// only read (agents, and the gateway token REST callers present) must be
// granted reads only, so a leaked reader token cannot drain the outbox,
// delete records or fetch vendor tokens.
package acl

import (
	"fmt"
	"strings"
)

// Readers are the callers that may only read biometrics.
var Readers = []string{"agents", "gateway"}

// readPrefix is the one service readers may call.
const readPrefix = "/biobridge.biometrics.v1.BiometricsService/"

// ReadersOnlyRead returns an error naming every pattern of value (a
// SERVICE_ACL) that grants a reader more than BiometricsService.
func ReadersOnlyRead(value string) error {
	var bad []string
	for _, entry := range strings.Split(value, ";") {
		caller, patterns, ok := strings.Cut(strings.TrimSpace(entry), "=")
		if !ok || !isReader(strings.TrimSpace(caller)) {
			continue
		}
		for _, p := range strings.Split(patterns, "|") {
			if p = strings.TrimSpace(p); !strings.HasPrefix(p, readPrefix) {
				bad = append(bad, fmt.Sprintf("%s=%s", strings.TrimSpace(caller), p))
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("SERVICE_ACL grants a reader more than BiometricsService: %s", strings.Join(bad, ", "))
	}
	return nil
}

func isReader(caller string) bool {
	for _, r := range Readers {
		if caller == r {
			return true
		}
	}
	return false
}
