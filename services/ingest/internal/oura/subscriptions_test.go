package oura

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/vendoremu"
)

// callback answers Oura's verification handshake for token.
func callback(t *testing.T, token string) string {
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

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestSubscriptionsAreKept: every wanted pair gets a subscription to our
// callback; one near its expiry is renewed, a deleted one recreated, an
// expired one replaced and one pointing elsewhere repointed.
func TestSubscriptionsAreKept(t *testing.T) {
	t.Parallel()
	clk := &clock{now: time.Now()}
	emu, err := vendoremu.New(vendoremu.Config{Now: clk.Now, OuraSubscriptionTTL: 30 * 24 * time.Hour}, nil)
	require.NoError(t, err)
	srv := httptest.NewServer(emu.Handler())
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = emu.Close(ctx)
	})
	const token = "verify-me"
	ours := callback(t, token)
	mgr := func(cb string) *Subscriptions {
		return NewSubscriptions(SubscriptionConfig{APIURL: srv.URL + "/oura", ClientID: vendoremu.DefaultOuraClientID,
			ClientSecret: vendoremu.DefaultOuraClientSecret, CallbackURL: cb, VerificationToken: token, RenewBefore: 7 * 24 * time.Hour})
	}
	m := mgr(ours)
	ctx := context.Background()
	want := len(DataTypes) * len(EventTypes)

	// Another deployment's callback holds every pair first.
	_, err = mgr(callback(t, token)).Ensure(ctx, clk.Now())
	require.NoError(t, err)

	res, err := m.Ensure(ctx, clk.Now())
	require.NoError(t, err)
	assert.Equal(t, want, res.Wanted)
	assert.Equal(t, want, res.Active)
	assert.Equal(t, map[string]int{ActionUpdated: want}, res.Actions, "the other callback's subscriptions are repointed at ours")
	subs, err := m.list(ctx)
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
	assert.Equal(t, map[string]int{ActionRenewed: want}, res.Actions)
	subs, err = m.list(ctx)
	require.NoError(t, err)
	for _, s := range subs {
		assert.True(t, s.ExpirationTime.After(clk.Now().Add(29*24*time.Hour)), "renewed for the whole TTL")
	}

	// A deleted subscription is recreated.
	require.NoError(t, m.delete(ctx, subs[0].ID))
	res, err = m.Ensure(ctx, clk.Now())
	require.NoError(t, err)
	assert.Equal(t, map[string]int{ActionCreated: 1}, res.Actions)

	// After a long outage they all lapsed: replaced.
	clk.advance(31 * 24 * time.Hour)
	res, err = m.Ensure(ctx, clk.Now())
	require.NoError(t, err)
	assert.Equal(t, map[string]int{ActionDeleted: want, ActionCreated: want}, res.Actions)
	subs, err = m.list(ctx)
	require.NoError(t, err)
	assert.Len(t, subs, want)

	// Wrong app credentials: the failure is reported, not hidden.
	bad := NewSubscriptions(SubscriptionConfig{APIURL: srv.URL + "/oura", ClientID: "x", ClientSecret: "y", CallbackURL: ours, VerificationToken: token})
	_, err = bad.Ensure(ctx, clk.Now())
	require.ErrorContains(t, err, "HTTP 401")
}
