package oura

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// EventTypes are the webhook event types the bridge subscribes to for each
// of DataTypes.
var EventTypes = []string{"create", "update", "delete"}

// Subscription is an Oura webhook subscription.
type Subscription struct {
	ID             string    `json:"id"`
	CallbackURL    string    `json:"callback_url"`
	EventType      string    `json:"event_type"`
	DataType       string    `json:"data_type"`
	ExpirationTime time.Time `json:"expiration_time"`
}

// SubscriptionConfig configures the subscription manager.
type SubscriptionConfig struct {
	// APIURL is OURA_API_URL (the host root).
	APIURL string
	// ClientID and ClientSecret authenticate the app (x-client-id,
	// x-client-secret): subscriptions belong to the app, not to a user.
	ClientID     string
	ClientSecret string
	// CallbackURL is where Oura delivers: PUBLIC_BASE_URL +
	// /v1/webhooks/oura.
	CallbackURL string
	// VerificationToken is echoed in Oura's handshake.
	VerificationToken string
	// RenewBefore: a subscription expiring within this is renewed.
	RenewBefore time.Duration
	// HTTPClient makes the calls (default: one with a 30s timeout, which
	// covers Oura's handshake with our callback during a create).
	HTTPClient *http.Client
}

// Subscriptions keeps a subscription for every (event type, data type) the
// bridge reads, pointing at the bridge's callback and renewed before it
// expires: Oura stops delivering silently when one lapses.
type Subscriptions struct {
	cfg SubscriptionConfig
}

// NewSubscriptions returns the manager.
func NewSubscriptions(cfg SubscriptionConfig) *Subscriptions {
	cfg.APIURL = strings.TrimRight(cfg.APIURL, "/")
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	return &Subscriptions{cfg: cfg}
}

// Actions taken by Ensure (metric label values).
const (
	ActionCreated = "created"
	ActionRenewed = "renewed"
	ActionUpdated = "updated"
	ActionDeleted = "deleted"
	ActionFailed  = "failed"
)

// EnsureResult says what one Ensure pass found and did.
type EnsureResult struct {
	// Actions counts what was done, by action.
	Actions map[string]int
	// Active is how many wanted pairs have a live subscription to our
	// callback after the pass; Wanted how many pairs there are.
	Active, Wanted int
}

// Ensure lists the app's subscriptions and, for every wanted pair: creates
// a missing one (deleting an expired one first), points one with another
// callback at ours, and renews one expiring within RenewBefore. A failure
// on one pair does not stop the others; all failures are returned joined.
func (s *Subscriptions) Ensure(ctx context.Context, now time.Time) (EnsureResult, error) {
	res := EnsureResult{Actions: map[string]int{}}
	subs, err := s.list(ctx)
	if err != nil {
		return res, err
	}
	byPair := map[[2]string][]Subscription{}
	for _, sub := range subs {
		k := [2]string{sub.EventType, sub.DataType}
		byPair[k] = append(byPair[k], sub)
	}
	var errs []error
	for _, dt := range DataTypes {
		for _, et := range EventTypes {
			res.Wanted++
			if err := s.ensurePair(ctx, et, dt, byPair[[2]string{et, dt}], now, res.Actions); err != nil {
				res.Actions[ActionFailed]++
				errs = append(errs, fmt.Errorf("oura subscription %s/%s: %w", et, dt, err))
				continue
			}
			res.Active++
		}
	}
	return res, errors.Join(errs...)
}

func (s *Subscriptions) ensurePair(ctx context.Context, eventType, dataType string, subs []Subscription, now time.Time, actions map[string]int) error {
	// Prefer a live subscription to our callback, then any live one.
	var live *Subscription
	for i := range subs {
		sub := &subs[i]
		if !sub.ExpirationTime.After(now) {
			continue
		}
		if live == nil || (sub.CallbackURL == s.cfg.CallbackURL && live.CallbackURL != s.cfg.CallbackURL) {
			live = sub
		}
	}
	if live == nil {
		// Expired subscriptions cannot be relied on to renew; replace them.
		for _, sub := range subs {
			if err := s.delete(ctx, sub.ID); err != nil {
				return err
			}
			actions[ActionDeleted]++
		}
		if err := s.create(ctx, eventType, dataType); err != nil {
			return err
		}
		actions[ActionCreated]++
		return nil
	}
	if live.CallbackURL != s.cfg.CallbackURL {
		// Left over from another deployment URL: deliveries would go there.
		if err := s.update(ctx, live.ID, eventType, dataType); err != nil {
			return err
		}
		actions[ActionUpdated]++
	}
	if live.ExpirationTime.Sub(now) < s.cfg.RenewBefore {
		if err := s.renew(ctx, live.ID); err != nil {
			return err
		}
		actions[ActionRenewed]++
	}
	return nil
}

func (s *Subscriptions) list(ctx context.Context) ([]Subscription, error) {
	var subs []Subscription
	if err := s.call(ctx, http.MethodGet, "/v2/webhook/subscription", nil, &subs); err != nil {
		return nil, fmt.Errorf("list oura subscriptions: %w", err)
	}
	return subs, nil
}

type subscriptionRequest struct {
	CallbackURL       string `json:"callback_url"`
	VerificationToken string `json:"verification_token"`
	EventType         string `json:"event_type"`
	DataType          string `json:"data_type"`
}

func (s *Subscriptions) create(ctx context.Context, eventType, dataType string) error {
	body := subscriptionRequest{CallbackURL: s.cfg.CallbackURL, VerificationToken: s.cfg.VerificationToken, EventType: eventType, DataType: dataType}
	if err := s.call(ctx, http.MethodPost, "/v2/webhook/subscription", body, nil); err != nil {
		return fmt.Errorf("create: %w", err)
	}
	return nil
}

func (s *Subscriptions) update(ctx context.Context, id, eventType, dataType string) error {
	body := subscriptionRequest{CallbackURL: s.cfg.CallbackURL, VerificationToken: s.cfg.VerificationToken, EventType: eventType, DataType: dataType}
	if err := s.call(ctx, http.MethodPut, "/v2/webhook/subscription/"+url.PathEscape(id), body, nil); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	return nil
}

func (s *Subscriptions) renew(ctx context.Context, id string) error {
	if err := s.call(ctx, http.MethodPut, "/v2/webhook/subscription/renew/"+url.PathEscape(id), nil, nil); err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	return nil
}

func (s *Subscriptions) delete(ctx context.Context, id string) error {
	err := s.call(ctx, http.MethodDelete, "/v2/webhook/subscription/"+url.PathEscape(id), nil, nil)
	var se *statusError
	if errors.As(err, &se) && se.code == http.StatusNotFound {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	return nil
}

// statusError is a non-2xx answer; its text carries the status only (the
// body may echo the client secret's neighbourhood, so it is not kept).
type statusError struct{ code int }

func (e *statusError) Error() string { return fmt.Sprintf("oura answered HTTP %d", e.code) }

func (s *Subscriptions) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.cfg.APIURL+path, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("x-client-id", s.cfg.ClientID)
	req.Header.Set("x-client-secret", s.cfg.ClientSecret)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("call oura: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read oura answer: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &statusError{code: resp.StatusCode}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode oura answer: %w", err)
		}
	}
	return nil
}
