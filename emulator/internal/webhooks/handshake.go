package webhooks

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/biobridge/bridge/emulator/internal/store"
)

// Handshake performs Oura's subscription verification: GET
// callback?verification_token=&challenge= and expect 200 with
// {"challenge": challenge} echoed. The caller draws challenge from the
// seeded source. Attempts and passes are counted as Oura's Handshakes and
// HandshakesPassed.
func Handshake(ctx context.Context, client *http.Client, timeout time.Duration, counters *store.CounterSet, callback, token, challenge string) error {
	u, err := url.Parse(callback)
	if err != nil {
		return fmt.Errorf("parse callback url: %w", err)
	}
	q := u.Query()
	q.Set("verification_token", token)
	q.Set("challenge", challenge)
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("build handshake request: %w", err)
	}
	resp, err := client.Do(req)
	counters.Count(store.Oura, func(v *store.VendorCounters) { v.Handshakes++ })
	if err != nil {
		return fmt.Errorf("call callback: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("callback answered %d, want 200", resp.StatusCode)
	}
	var body struct {
		Challenge string `json:"challenge"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&body); err != nil {
		return fmt.Errorf("callback answer is not json: %w", err)
	}
	if body.Challenge != challenge {
		return fmt.Errorf("callback echoed the wrong challenge")
	}
	counters.Count(store.Oura, func(v *store.VendorCounters) { v.HandshakesPassed++ })
	return nil
}
