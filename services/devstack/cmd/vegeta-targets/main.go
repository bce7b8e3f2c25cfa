// Command vegeta-targets prepares a vegeta (github.com/tsenart/vegeta)
// attack on the REST gateway of a running devstack, for the cross-check in
// scripts/vegeta-crosscheck.sh:
//
//   - <out>/healthkit.targets: -pushes HealthKit pushes of -samples
//     heart-rate samples each, spread over -users users (each with a user
//     JWT), every sample a new one, in vegeta's JSON target format; attack
//     them with -lazy so each is sent once;
//   - <out>/latest.targets: GET /v1/users/{user}/biometrics/latest with the
//     agent's service token for -latest-users users, which it first seeds
//     through the gateway with one push of five metrics each (so every
//     answer has five values and the cache is warm).
//
// The secrets default to the devstack's development values.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/services/devstack/stack"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vegeta-targets:", err)
		os.Exit(1)
	}
}

type target struct {
	Method string              `json:"method"`
	URL    string              `json:"url"`
	Body   []byte              `json:"body,omitempty"`
	Header map[string][]string `json:"header"`
}

type sample struct {
	UUID      string  `json:"uuid"`
	Type      string  `json:"type"`
	Value     float64 `json:"value"`
	Unit      string  `json:"unit"`
	StartDate string  `json:"start_date"`
	EndDate   string  `json:"end_date"`
	Source    source  `json:"source"`
}

type source struct {
	Name        string `json:"name"`
	BundleID    string `json:"bundle_id"`
	DeviceModel string `json:"device_model"`
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("vegeta-targets", flag.ContinueOnError)
	fs.SetOutput(stdout)
	dev := stack.DevSecrets()
	gateway := fs.String("gateway", "http://127.0.0.1:8080", "REST gateway base URL")
	secret := fs.String("user-token-secret", dev["USER_TOKEN_SECRET"], "USER_TOKEN_SECRET of the stack (user JWTs are signed with it)")
	agent := fs.String("agent-token", "dev-agent-token", "the agent's service token (GetLatest)")
	out := fs.String("out", ".", "directory for healthkit.targets and latest.targets")
	pushes := fs.Int("pushes", 40, "HealthKit pushes")
	samples := fs.Int("samples", 1000, "samples per push")
	users := fs.Int("users", 4, "HealthKit users")
	latestUsers := fs.Int("latest-users", 1000, "GetLatest users (seeded first)")
	run := fs.String("run", time.Now().UTC().Format("150405"), "run id put in user names and sample UUIDs, so reruns push new samples")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *pushes < 1 || *samples < 1 || *users < 1 || *latestUsers < 1 {
		return errors.New("-pushes, -samples, -users and -latest-users must be positive")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	token := func(user string) (string, error) { return auth.IssueUserToken([]byte(*secret), user, 2*time.Hour) }
	// body is one push; its sample UUIDs are <run>-<group>-<k>, unique
	// per run, group and index.
	body := func(group string, n int, types [][2]string, values []float64, base time.Time) []byte {
		ss := make([]sample, n)
		for k := range ss {
			at := base.Add(time.Duration(k) * time.Second).Format(time.RFC3339)
			t := types[k%len(types)]
			ss[k] = sample{UUID: fmt.Sprintf("%s-%s-%d", *run, group, k), Type: t[0], Unit: t[1], Value: values[k%len(values)],
				StartDate: at, EndDate: at, Source: source{"Apple Watch", "com.apple.health", "Watch7,1"}}
		}
		b, _ := json.Marshal(map[string]any{"samples": ss})
		return b
	}

	// HealthKit pushes: every sample new (run id, push number, index).
	hk, err := os.Create(filepath.Join(*out, "healthkit.targets"))
	if err != nil {
		return err
	}
	enc := json.NewEncoder(hk)
	base := time.Now().UTC().Add(-24 * time.Hour).Truncate(time.Second)
	hr := [][2]string{{"HKQuantityTypeIdentifierHeartRate", "count/min"}}
	rates := make([]float64, 60)
	for i := range rates {
		rates[i] = float64(55 + i)
	}
	for i := range *pushes {
		user := fmt.Sprintf("vegeta-hk-%s-%d", *run, i%*users)
		tok, err := token(user)
		if err != nil {
			return err
		}
		b := body(fmt.Sprintf("push%d", i), *samples, hr, rates, base.Add(time.Duration(i**samples)*time.Second))
		if err := enc.Encode(target{Method: http.MethodPost, URL: *gateway + "/v1/healthkit/samples", Body: b,
			Header: map[string][]string{"Authorization": {"Bearer " + tok}, "Content-Type": {"application/json"}}}); err != nil {
			return err
		}
	}
	if err := hk.Close(); err != nil {
		return err
	}

	// GetLatest: seed each user with five metrics through the gateway.
	types := [][2]string{
		{"HKQuantityTypeIdentifierHeartRate", "count/min"}, {"HKQuantityTypeIdentifierRestingHeartRate", "count/min"},
		{"HKQuantityTypeIdentifierHeartRateVariabilitySDNN", "ms"}, {"HKQuantityTypeIdentifierOxygenSaturation", "%"},
		{"HKQuantityTypeIdentifierRespiratoryRate", "count/min"},
	}
	values := []float64{62, 55, 48, 0.97, 14}
	lt, err := os.Create(filepath.Join(*out, "latest.targets"))
	if err != nil {
		return err
	}
	enc = json.NewEncoder(lt)
	client := &http.Client{Timeout: time.Minute}
	for i := range *latestUsers {
		user := fmt.Sprintf("vegeta-latest-%s-%d", *run, i)
		tok, err := token(user)
		if err != nil {
			return err
		}
		b := body(fmt.Sprintf("seed%d", i), len(types), types, values, time.Now().UTC().Add(-time.Hour).Truncate(time.Second))
		if err := post(ctx, client, *gateway+"/v1/healthkit/samples", tok, b); err != nil {
			return fmt.Errorf("seed %s: %w", user, err)
		}
		if err := enc.Encode(target{Method: http.MethodGet, URL: *gateway + "/v1/users/" + user + "/biometrics/latest",
			Header: map[string][]string{"Authorization": {"Bearer " + *agent}}}); err != nil {
			return err
		}
	}
	if err := lt.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %d HealthKit targets and %d GetLatest targets (users seeded) in %s\n", *pushes, *latestUsers, *out)
	return nil
}

func post(ctx context.Context, client *http.Client, url, token string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %.300s", resp.StatusCode, b)
	}
	return nil
}
