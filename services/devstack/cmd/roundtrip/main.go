// Command roundtrip sends one HealthKit sample through a running gateway and
// waits until persistence's GetLatest returns it: the smallest proof that a
// deployed suite (gateway → ingest → persistence, and persistence's gRPC
// API) works end to end. scripts/images-test.sh runs it against the
// containers; it works against any deployment reachable from where it runs.
//
//	roundtrip -gateway http://127.0.0.1:8080 -persistence 127.0.0.1:9103 \
//	  -user-token-secret "$USER_TOKEN_SECRET" -service-token "$AGENT_TOKEN"
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/grpcclient"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "roundtrip:", err)
		os.Exit(1)
	}
}

// metric is the catalog name a HealthKit heart-rate sample becomes.
const metric = "heart_rate_bpm"

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	gateway := fs.String("gateway", "http://127.0.0.1:8080", "gateway base URL")
	persistence := fs.String("persistence", "127.0.0.1:9103", "persistence gRPC address")
	secret := fs.String("user-token-secret", "", "USER_TOKEN_SECRET of ingest: signs the user's JWT for the push")
	serviceToken := fs.String("service-token", "", "a service token persistence grants BiometricsService (SERVICE_TOKENS, SERVICE_ACL)")
	user := fs.String("user", fmt.Sprintf("roundtrip-%d", time.Now().UnixNano()), "user id of the pushed sample")
	timeout := fs.Duration("timeout", time.Minute, "how long to wait for the value to be readable")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *secret == "" || *serviceToken == "" {
		return errors.New("-user-token-secret and -service-token are required")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	// A value and an observation time no earlier run can have left behind.
	value := float64(40 + rand.IntN(140))
	observed := time.Now().UTC().Truncate(time.Millisecond)
	token, err := auth.IssueUserToken([]byte(*secret), *user, 10*time.Minute)
	if err != nil {
		return err
	}
	if err := push(ctx, *gateway, token, value, observed); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pushed %s=%v at %s for %s through %s\n", metric, value, observed.Format(time.RFC3339Nano), *user, *gateway)

	conn, err := grpcclient.Dial(*persistence, grpcclient.Config{DefaultTimeout: 5 * time.Second, ServiceToken: *serviceToken})
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }() // reads only: a close error loses nothing
	client := biometricsv1.NewBiometricsServiceClient(conn)
	var last error
	for {
		resp, err := client.GetLatest(ctx, &biometricsv1.GetLatestRequest{UserId: *user, Metrics: []string{metric}})
		if err == nil {
			for _, v := range resp.GetValues() {
				if v.GetMetric() == metric && v.GetValue() == value && v.GetObservedAt().AsTime().Equal(observed) {
					fmt.Fprintf(stdout, "GetLatest on %s returned %s=%v observed at %s\n", *persistence, metric, v.GetValue(), v.GetObservedAt().AsTime().Format(time.RFC3339Nano))
					return nil
				}
			}
			last = fmt.Errorf("GetLatest returned %v, not the pushed value yet", resp.GetValues())
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the pushed value never came back from GetLatest: %w", last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// push sends one heart-rate sample as the iOS app does and requires it accepted.
func push(ctx context.Context, gateway, token string, value float64, at time.Time) error {
	ts := at.Format(time.RFC3339Nano)
	body, err := json.Marshal(map[string]any{"samples": []map[string]any{{
		"uuid": fmt.Sprintf("roundtrip-%d", at.UnixNano()), "type": "HKQuantityTypeIdentifierHeartRate",
		"value": value, "unit": "count/min", "start_date": ts, "end_date": ts,
		"source": map[string]string{"name": "Apple Watch", "bundle_id": "com.apple.health", "device_model": "Watch7,1"},
	}}})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gateway+"/v1/healthkit/samples", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("push: read response: %w", err)
	}
	var out struct {
		Accepted int `json:"accepted"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(data, &out) != nil || out.Accepted != 1 {
		return fmt.Errorf("push: %s: %s", resp.Status, data)
	}
	return nil
}
