package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/biobridge/bridge/emulator"
	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/benchreport"
	"github.com/biobridge/bridge/services/ingest/vendorhttp"
	"github.com/biobridge/bridge/services/ingest/whoop"
)

// benchFreshness measures, one WHOOP workout at a time, the time from the
// emulator creating the workout (and sending its webhook) until GetLatest
// shows it: delivery, verification, the queue, the worker, the token
// broker, the fetch, WriteEvents and the latest cache. The baseline does
// the same fetch, normalization and WriteEvents synchronously from the
// sender, without webhook, queue or worker: the floor of the data path.
func benchFreshness(ctx context.Context, s *stack, o options) ([]benchreport.Result, error) {
	const user, emuUser = "bench-fresh-user", "bench-fresh"
	if err := connectWhoop(ctx, s, user, emuUser); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	conn, err := grpc.NewClient(s.persistence.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }()
	bconn, err := grpc.NewClient(s.brokerAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer func() { _ = bconn.Close() }()
	svc := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+serviceToken)
	bio := biometricsv1.NewBiometricsServiceClient(conn)
	base := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Second)
	next := 0
	// waitFor polls GetLatest until strain comes from record id.
	waitFor := func(id string) error {
		deadline := time.Now().Add(30 * time.Second)
		var last *biometricsv1.LatestValue
		for time.Now().Before(deadline) {
			resp, err := bio.GetLatest(svc, &biometricsv1.GetLatestRequest{UserId: user, Metrics: []string{"strain"}})
			if err != nil {
				return err
			}
			if v := resp.GetValues(); len(v) == 1 {
				if v[0].GetVendorRecordId() == id {
					return nil
				}
				last = v[0]
			}
			time.Sleep(time.Millisecond)
		}
		return fmt.Errorf("record %s (#%d) never became latest; latest is %s observed %s", id, next, last.GetVendorRecordId(), last.GetObservedAt().AsTime())
	}
	create := func(noWebhook bool) (string, error) {
		next++
		end := base.Add(time.Duration(next) * 10 * time.Second)
		recs, err := s.emu.CreateRecord(ctx, emulator.RecordSpec{User: emuUser, Vendor: emulator.Whoop, Type: "workout",
			Start: end.Add(-30 * time.Minute), End: end, NoWebhook: noWebhook, Values: map[string]float64{"strain": float64(5 + next%10)}})
		if err != nil {
			return "", err
		}
		return recs[0].ID, nil
	}

	// Warm-up through the whole path.
	for range 5 {
		id, err := create(false)
		if err != nil {
			return nil, err
		}
		if err := waitFor(id); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	lat := make([]time.Duration, 0, o.freshness)
	for range o.freshness {
		start := time.Now()
		id, err := create(false)
		if err != nil {
			return nil, err
		}
		if err := waitFor(id); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(start))
	}

	broker := tokensv1.NewTokenBrokerServiceClient(bconn)
	store := persistencev1.NewPersistenceServiceClient(conn)
	api, closeAPI, err := directWhoopAPI(s)
	if err != nil {
		return nil, err
	}
	defer closeAPI()
	base2 := make([]time.Duration, 0, o.freshness)
	for range o.freshness {
		start := time.Now()
		id, err := create(true)
		if err != nil {
			return nil, err
		}
		tok, err := broker.GetAccessToken(svc, &tokensv1.GetAccessTokenRequest{UserId: user, Vendor: "whoop"})
		if err != nil {
			return nil, err
		}
		w, err := api.Workout(ctx, tok.GetAccessToken(), id)
		if err != nil {
			return nil, err
		}
		n, err := whoop.NormalizeWorkout(user, w)
		if err != nil {
			return nil, err
		}
		if _, err := store.WriteEvents(svc, &persistencev1.WriteEventsRequest{Events: []*persistencev1.EventInput{n.Event}}); err != nil {
			return nil, err
		}
		if err := waitFor(id); err != nil {
			return nil, err
		}
		base2 = append(base2, time.Since(start))
	}
	p99, p50 := percentile(lat, 0.99), percentile(lat, 0.50)
	b99 := percentile(base2, 0.99)
	notes := fmt.Sprintf("%d WHOOP workouts one at a time, emulator without added latency: p50 %.1fms; baseline: the sender fetches "+
		"(token from the broker, GET from the emulator), normalizes and calls WriteEvents itself, no webhook/queue/worker, p99 %.1fms, p50 %.1fms",
		o.freshness, ms(p50), ms(b99), ms(percentile(base2, 0.5)))
	return []benchreport.Result{benchreport.Lower("ingest.freshness_p99_ms", "ms", ms(p99), ms(b99), notes)}, nil
}

// connectWhoop runs the connect flow through the gateway, as the tests do.
// appReturnURL is the app return URL the token broker forwards the
// vendor's redirect to (OAUTH_RETURN_URLS).
const appReturnURL = "biobridge-bench-app:/oauth"

func connectWhoop(ctx context.Context, s *stack, user, emuUser string) error {
	if _, err := s.emu.AddUser(emulator.UserSpec{Name: emuUser}); err != nil {
		return err
	}
	tok, err := auth.IssueUserToken([]byte(userTokenSecret), user, time.Hour)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.gatewayURL+"/v1/connections/whoop/authorize", strings.NewReader(`{}`))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	body, err := doHTTP(http.DefaultClient, req)
	if err != nil {
		return err
	}
	var start struct {
		AuthorizeURL string `json:"authorize_url"`
	}
	if err := json.Unmarshal(body, &start); err != nil {
		return err
	}
	u, err := url.Parse(start.AuthorizeURL)
	if err != nil {
		return err
	}
	q := u.Query()
	q.Set("login_hint", emuUser)
	u.RawQuery = q.Encode()
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := noFollow.Get(u.String())
	if err != nil {
		return err
	}
	_ = res.Body.Close()
	loc, err := url.Parse(res.Header.Get("Location"))
	if err != nil || res.StatusCode != http.StatusFound {
		return fmt.Errorf("authorize: HTTP %d", res.StatusCode)
	}
	// The gateway serves the vendor's redirect and sends the browser on to
	// the app's return URL; the app completes the link with its user's JWT.
	cb, err := http.NewRequestWithContext(ctx, http.MethodGet, s.gatewayURL+loc.Path+"?"+loc.RawQuery, nil)
	if err != nil {
		return err
	}
	res, err = noFollow.Do(cb)
	if err != nil {
		return err
	}
	_ = res.Body.Close()
	back, query, _ := strings.Cut(res.Header.Get("Location"), "?")
	if res.StatusCode != http.StatusFound || back != appReturnURL {
		return fmt.Errorf("callback: HTTP %d to %q", res.StatusCode, back)
	}
	app, err := url.ParseQuery(query)
	if err != nil {
		return err
	}
	complete, err := http.NewRequestWithContext(ctx, http.MethodPost, s.gatewayURL+"/v1/connections/whoop/complete",
		strings.NewReader(`{"code":"`+app.Get("code")+`","state":"`+app.Get("state")+`"}`))
	if err != nil {
		return err
	}
	complete.Header.Set("Authorization", "Bearer "+tok)
	_, err = doHTTP(http.DefaultClient, complete)
	return err
}

func doHTTP(c *http.Client, req *http.Request) ([]byte, error) {
	res, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: HTTP %d: %s", req.Method, req.URL.Path, res.StatusCode, b)
	}
	return b, nil
}

// directWhoopAPI is the baseline's own WHOOP client (no budget: the
// emulator runs without limits here).
func directWhoopAPI(s *stack) (*whoop.API, func(), error) {
	c, err := vendorhttp.New(vendorhttp.Config{Vendor: "whoop", BaseURL: s.emu.WhoopURL() + whoop.APIPath})
	if err != nil {
		return nil, nil, err
	}
	return whoop.NewAPI(c), func() { _ = c.Close(context.Background()) }, nil
}
