package ingesttest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
	"github.com/biobridge/bridge/services/ingest/oura"
)

// ouraCallback answers Oura's verification handshake for token.
func ouraCallback(t *testing.T, token string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("verification_token") != token {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"challenge": r.URL.Query().Get("challenge")})
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/v1/webhooks/oura"
}

// subsClock is a settable clock shared by the emulator and the test.
type subsClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *subsClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *subsClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestSubscriptionsAreKept: every wanted pair gets a subscription to our
// callback; one near its expiry is renewed, a deleted one recreated, an
// expired one replaced and one pointing elsewhere repointed.
func TestOuraSubscriptionsAreKept(t *testing.T) {
	t.Parallel()
	clk := &subsClock{now: time.Now()}
	emu, err := emulator.New(emulator.Config{Now: clk.Now, OuraSubscriptionTTL: 30 * 24 * time.Hour}, nil)
	require.NoError(t, err)
	srv := httptest.NewServer(emu.Handler())
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = emu.Close(ctx)
	})
	const token = "verify-me"
	ours := ouraCallback(t, token)
	mgr := func(cb string) *oura.Subscriptions {
		return oura.NewSubscriptions(oura.SubscriptionConfig{APIURL: srv.URL + "/oura", ClientID: emulator.DefaultOuraClientID,
			ClientSecret: emulator.DefaultOuraClientSecret, CallbackURL: cb, VerificationToken: token, RenewBefore: 7 * 24 * time.Hour})
	}
	m := mgr(ours)
	ctx := context.Background()
	want := len(oura.DataTypes) * len(oura.EventTypes)

	// Another deployment's callback holds every pair first.
	_, err = mgr(ouraCallback(t, token)).Ensure(ctx, clk.Now())
	require.NoError(t, err)

	res, err := m.Ensure(ctx, clk.Now())
	require.NoError(t, err)
	assert.Equal(t, want, res.Wanted)
	assert.Equal(t, want, res.Active)
	assert.Equal(t, map[string]int{oura.ActionUpdated: want}, res.Actions, "the other callback's subscriptions are repointed at ours")
	subs, err := listOuraSubscriptions(ctx, srv.URL)
	require.NoError(t, err)
	require.Len(t, subs, want)
	for _, s := range subs {
		assert.Equal(t, ours, s.CallbackURL)
	}

	res, err = m.Ensure(ctx, clk.Now())
	require.NoError(t, err)
	assert.Empty(t, res.Actions, "nothing to do")

	// Three weeks and a half later every subscription is within a week of
	// its expiry: renewed.
	clk.advance(24*24*time.Hour + time.Hour)
	res, err = m.Ensure(ctx, clk.Now())
	require.NoError(t, err)
	assert.Equal(t, map[string]int{oura.ActionRenewed: want}, res.Actions)
	subs, err = listOuraSubscriptions(ctx, srv.URL)
	require.NoError(t, err)
	for _, s := range subs {
		assert.True(t, s.ExpirationTime.After(clk.Now().Add(29*24*time.Hour)), "renewed for the whole TTL")
	}

	// A deleted subscription is recreated.
	require.NoError(t, deleteOuraSubscription(ctx, srv.URL, subs[0].ID))
	res, err = m.Ensure(ctx, clk.Now())
	require.NoError(t, err)
	assert.Equal(t, map[string]int{oura.ActionCreated: 1}, res.Actions)

	// After a long outage they all lapsed: replaced.
	clk.advance(31 * 24 * time.Hour)
	res, err = m.Ensure(ctx, clk.Now())
	require.NoError(t, err)
	assert.Equal(t, map[string]int{oura.ActionDeleted: want, oura.ActionCreated: want}, res.Actions)
	subs, err = listOuraSubscriptions(ctx, srv.URL)
	require.NoError(t, err)
	assert.Len(t, subs, want)

	// Wrong app credentials: the failure is reported, not hidden.
	bad := oura.NewSubscriptions(oura.SubscriptionConfig{APIURL: srv.URL + "/oura", ClientID: "x", ClientSecret: "y", CallbackURL: ours, VerificationToken: token})
	_, err = bad.Ensure(ctx, clk.Now())
	require.ErrorContains(t, err, "HTTP 401")
}

// listOuraSubscriptions reads the app's subscriptions from the emulator's
// Oura API, as the manager itself lists them.
func listOuraSubscriptions(ctx context.Context, emuURL string) ([]oura.Subscription, error) {
	res, err := ouraAppCall(ctx, http.MethodGet, emuURL+"/oura/v2/webhook/subscription")
	if err != nil {
		return nil, err
	}
	defer func() { _ = res.Body.Close() }()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("list subscriptions: HTTP %d", res.StatusCode)
	}
	var subs []oura.Subscription
	if err := json.NewDecoder(res.Body).Decode(&subs); err != nil {
		return nil, fmt.Errorf("decode subscriptions: %w", err)
	}
	return subs, nil
}

// deleteOuraSubscription deletes subscription id through the emulator's
// Oura API.
func deleteOuraSubscription(ctx context.Context, emuURL, id string) error {
	res, err := ouraAppCall(ctx, http.MethodDelete, emuURL+"/oura/v2/webhook/subscription/"+url.PathEscape(id))
	if err != nil {
		return err
	}
	_ = res.Body.Close()
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("delete subscription %s: HTTP %d", id, res.StatusCode)
	}
	return nil
}

// ouraAppCall makes an app-authenticated (x-client-id, x-client-secret)
// call to the Oura subscription API.
func ouraAppCall(ctx context.Context, method, u string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("x-client-id", emulator.DefaultOuraClientID)
	req.Header.Set("x-client-secret", emulator.DefaultOuraClientSecret)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	return res, nil
}
