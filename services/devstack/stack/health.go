package stack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// readinessURLs are what `devstack healthcheck` asks: every service's admin
// /readyz, and the gateway's public /healthz (the port vendors and apps use).
var readinessURLs = []struct{ service, addrVar, path string }{
	{"gateway", "GATEWAY_HTTP_ADDR", "/healthz"},
	{"gateway", "GATEWAY_ADMIN_ADDR", "/readyz"},
	{"ingest", "INGEST_ADMIN_ADDR", "/readyz"},
	{"tokenbroker", "TOKENBROKER_ADMIN_ADDR", "/readyz"},
	{"persistence", "PERSISTENCE_ADMIN_ADDR", "/readyz"},
	{"publisher", "PUBLISHER_ADMIN_ADDR", "/readyz"},
}

// HealthCheck is the `devstack healthcheck` command, for container health
// checks: it resolves the addresses a stack started with getenv listens on
// (the same defaults Start uses) and succeeds when every service answers
// ready. A listen address like ":9200" is probed on loopback.
func HealthCheck(ctx context.Context, getenv func(string) string) error {
	e := newEnv(getenv)
	if err := e.fillAddrs(false); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	errs := make([]error, len(readinessURLs))
	var g errgroup.Group
	for i, u := range readinessURLs {
		addr := e.get(u.addrVar)
		if strings.HasPrefix(addr, ":") {
			addr = "127.0.0.1" + addr
		}
		g.Go(func() error {
			if err := probe(ctx, "http://"+addr+u.path); err != nil {
				errs[i] = fmt.Errorf("%s (%s): %w", u.service, u.addrVar, err)
			}
			return nil
		})
	}
	_ = g.Wait()
	return errors.Join(errs...)
}

func probe(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	if err := resp.Body.Close(); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
