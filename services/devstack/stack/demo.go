package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"time"

	"golang.org/x/sync/errgroup"
)

// Demo users: one per source, so every path of the suite shows live values.
const (
	DemoWhoopUser = "demo-whoop"
	DemoOuraUser  = "demo-oura"
)

// RunDemo connects the demo users to the emulated vendors through the real
// OAuth flow (gateway → token broker → emulator → callback) and then keeps
// producing data until ctx ends: WHOOP and Oura records (delivered as signed
// webhooks) and HealthKit pushes for DemoUser.
func (s *Stack) RunDemo(ctx context.Context, interval time.Duration, out io.Writer) error {
	for _, c := range []struct{ user, vendor string }{{DemoWhoopUser, "whoop"}, {DemoOuraUser, "oura"}} {
		if err := s.Connect(ctx, c.user, c.vendor); err != nil {
			return fmt.Errorf("connect %s to %s: %w", c.user, c.vendor, err)
		}
	}
	agent := s.AgentToken()
	gw := s.GatewayURL()
	fmt.Fprintf(out, "demo: %s (WHOOP), %s (Oura) and %s (HealthKit) produce data every %s; watch them with:\n", DemoWhoopUser, DemoOuraUser, DemoUser, interval)
	for _, u := range []string{DemoWhoopUser, DemoOuraUser, DemoUser} {
		fmt.Fprintf(out, "  curl -s -H 'Authorization: Bearer %s' %s/v1/users/%s/biometrics/latest\n", agent, gw, u)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.Emulator.RunDemo(gctx, interval) })
	g.Go(func() error { return s.pushHealthKit(gctx, interval) })
	return g.Wait()
}

// Connect runs the connect flow for user and vendor the way the app and a
// browser would: ask the gateway for the authorize URL, follow the vendor's
// redirect back to the callback and on to the app's return URL, and
// complete there with the user's JWT.
// The emulated vendor account has the user's name.
func (s *Stack) Connect(ctx context.Context, user, vendor string) error {
	app, err := s.AuthorizeInBrowser(ctx, user, user, vendor)
	if err != nil {
		return err
	}
	return s.CompleteInApp(ctx, user, vendor, app)
}

// AuthorizeInBrowser starts the connect flow as starter and approves it at
// the emulated vendor as emuUser's browser would, returning the query the
// app receives at its return URL (vendor, code, state).
func (s *Stack) AuthorizeInBrowser(ctx context.Context, starter, emuUser, vendor string) (url.Values, error) {
	token, err := s.UserToken(starter, time.Hour)
	if err != nil {
		return nil, err
	}
	return AuthorizeInBrowser(ctx, s.GatewayURL(), token, emuUser, vendor)
}

// AuthorizeInBrowser is Stack.AuthorizeInBrowser against the gateway at gw,
// started by the holder of the user token token.
func AuthorizeInBrowser(ctx context.Context, gw, token, emuUser, vendor string) (url.Values, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gw+"/v1/connections/"+vendor+"/authorize", bytes.NewReader([]byte(`{}`)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	var start struct {
		AuthorizeURL string `json:"authorize_url"`
	}
	if err := doJSON(req, &start); err != nil {
		return nil, fmt.Errorf("start authorization: %w", err)
	}
	u, err := url.Parse(start.AuthorizeURL)
	if err != nil {
		return nil, fmt.Errorf("authorize url: %w", err)
	}
	// The emulator approves the emulated user named by login_hint, as a
	// logged-in vendor account would.
	q := u.Query()
	q.Set("login_hint", emuUser)
	u.RawQuery = q.Encode()
	// The browser follows the vendor's redirect to the gateway's callback,
	// which redirects on to the app's return URL: a custom scheme a
	// browser hands to the app, so following stops there.
	var landed *url.URL
	browser := &http.Client{CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		if r.URL.Scheme != "http" && r.URL.Scheme != "https" {
			landed = r.URL
			return http.ErrUseLastResponse
		}
		return nil
	}}
	req, err = http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := browser.Do(req)
	if err != nil {
		return nil, fmt.Errorf("authorize in the browser: %w", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close()
	if landed == nil {
		return nil, fmt.Errorf("authorize in the browser: %s: %.300s", resp.Status, body)
	}
	return landed.Query(), nil
}

// CompleteInApp completes the connect flow as the app signed in as
// completer does with what it received at its return URL.
func (s *Stack) CompleteInApp(ctx context.Context, completer, vendor string, app url.Values) error {
	token, err := s.UserToken(completer, time.Hour)
	if err != nil {
		return err
	}
	return CompleteInApp(ctx, s.GatewayURL(), token, vendor, app)
}

// CompleteInApp is Stack.CompleteInApp against the gateway at gw, as the
// app holding the user token token.
func CompleteInApp(ctx context.Context, gw, token, vendor string, app url.Values) error {
	if e := app.Get("error"); e != "" {
		return fmt.Errorf("the vendor did not authorize: %s", e)
	}
	body, err := json.Marshal(map[string]string{"code": app.Get("code"), "state": app.Get("state")})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gw+"/v1/connections/"+vendor+"/complete", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	return doJSON(req, nil)
}

func doJSON(req *http.Request, v any) error {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %.300s", req.Method, req.URL.Path, resp.Status, body)
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(body, v)
}

// pushHealthKit sends a few plausible samples for DemoUser every interval.
func (s *Stack) pushHealthKit(ctx context.Context, interval time.Duration) error {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	hr := 62.0
	t := time.NewTicker(interval)
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		token, err := s.UserToken(DemoUser, time.Hour)
		if err != nil {
			return err
		}
		hr = min(max(hr+rng.NormFloat64()*3, 48), 110)
		now := time.Now().UTC().Format(time.RFC3339Nano)
		src := map[string]string{"name": "Apple Watch", "bundle_id": "com.apple.health", "device_model": "Watch7,1"}
		body, err := json.Marshal(map[string]any{"samples": []map[string]any{
			{"uuid": fmt.Sprintf("demo-hr-%d-%d", time.Now().Unix(), n), "type": "HKQuantityTypeIdentifierHeartRate", "value": float64(int(hr)), "unit": "count/min", "start_date": now, "end_date": now, "source": src},
			{"uuid": fmt.Sprintf("demo-spo2-%d-%d", time.Now().Unix(), n), "type": "HKQuantityTypeIdentifierOxygenSaturation", "value": 0.95 + float64(rng.IntN(5))/100, "unit": "%", "start_date": now, "end_date": now, "source": src},
			{"uuid": fmt.Sprintf("demo-hrv-%d-%d", time.Now().Unix(), n), "type": "HKQuantityTypeIdentifierHeartRateVariabilitySDNN", "value": float64(35 + rng.IntN(30)), "unit": "ms", "start_date": now, "end_date": now, "source": src},
		}})
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.GatewayURL()+"/v1/healthkit/samples", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		if err := doJSON(req, nil); err != nil && ctx.Err() == nil {
			s.opts.Logger.Warn("demo healthkit push", "err", err)
		}
	}
}
