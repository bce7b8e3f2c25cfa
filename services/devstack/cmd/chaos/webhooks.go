package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/services/devstack/stack"
)

// delivery is one webhook POST the vendors (the emulator, or the bad-input
// corpus) sent to the bridge's public URL, as the sender saw it.
type delivery struct {
	vendor     string // "whoop" or "oura"
	start      time.Time
	latency    time.Duration
	status     int // 0: no answer
	objectID   string
	deliveryID string // from the bridge's answer
}

// recorder is the bridge's public URL as the vendors and the browser see
// it: a reverse proxy to the gateway that records every webhook POST with
// the answer it got, so the checker knows which deliveries were
// acknowledged.
type recorder struct {
	ln  net.Listener
	srv *http.Server
	rp  *httputil.ReverseProxy

	mu         sync.Mutex
	deliveries []delivery
}

func newRecorder(listen, gateway string) (*recorder, error) {
	target, err := url.Parse(gateway)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	r := &recorder{ln: ln, rp: httputil.NewSingleHostReverseProxy(target)}
	r.rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) }
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

func (r *recorder) URL() string { return "http://" + r.ln.Addr().String() }

type capture struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (c *capture) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *capture) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	if c.body.Len() < 4<<10 {
		c.body.Write(b)
	}
	return c.ResponseWriter.Write(b)
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	vendor := map[string]string{"/v1/webhooks/whoop": "whoop", "/v1/webhooks/oura": "oura"}[req.URL.Path]
	if req.Method != http.MethodPost || vendor == "" {
		r.rp.ServeHTTP(w, req)
		return
	}
	// The body is read here only to learn what the webhook names; the
	// gateway gets the same bytes.
	body, err := io.ReadAll(io.LimitReader(req.Body, 64<<20))
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	c := &capture{ResponseWriter: w}
	t0 := time.Now()
	r.rp.ServeHTTP(c, req)
	d := delivery{vendor: vendor, start: t0, latency: time.Since(t0), status: c.status, objectID: webhookObject(vendor, body)}
	var ans struct {
		DeliveryID string `json:"delivery_id"`
	}
	if json.Unmarshal(c.body.Bytes(), &ans) == nil {
		d.deliveryID = ans.DeliveryID
	}
	r.mu.Lock()
	r.deliveries = append(r.deliveries, d)
	r.mu.Unlock()
}

// since returns the deliveries recorded from index i on, and the index to
// continue from.
func (r *recorder) since(i int) ([]delivery, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.deliveries[i:]...), len(r.deliveries)
}

func (r *recorder) Close() error { return r.srv.Close() }

// webhookObject is the vendor record a webhook body names ("" when it
// does not parse).
func webhookObject(vendor string, body []byte) string {
	var b struct {
		ID       string `json:"id"`
		ObjectID string `json:"object_id"`
	}
	if json.Unmarshal(body, &b) != nil {
		return ""
	}
	if vendor == "whoop" {
		return b.ID
	}
	return b.ObjectID
}

// emuRecord is a record the load created at the emulator.
type emuRecord struct {
	vendor, typ, id, user string
}

// vendorUser is an internal user connected to one emulated vendor.
type vendorUser struct {
	user, vendor string
	n            int // records created so far
}

// emuAdmin calls the emulator's admin API (the harness's, not the
// bridge's view of the vendor: it never goes through the proxy).
func emuAdmin(ctx context.Context, emu, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, emu+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("emulator %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("emulator %s %s: %s: %.300s", method, path, resp.Status, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// connectUsers connects every vendor user through the real flow: the
// gateway's authorize, the emulator's consent, the callback, the app's
// complete.
func connectUsers(ctx context.Context, gw string, users []vendorUser) error {
	for _, u := range users {
		tok, err := auth.IssueUserToken(userSecret(), u.user, time.Hour)
		if err != nil {
			return err
		}
		app, err := stack.AuthorizeInBrowser(ctx, gw, tok, u.user, u.vendor)
		if err != nil {
			return fmt.Errorf("connect %s to %s: %w", u.user, u.vendor, err)
		}
		if err := stack.CompleteInApp(ctx, gw, tok, u.vendor, app); err != nil {
			return fmt.Errorf("connect %s to %s: %w", u.user, u.vendor, err)
		}
	}
	return nil
}

// vendorLoad creates records at the emulator for the connected users, so
// the emulator sends signed webhooks (with its duplicate, reorder and drop
// faults) and ingest fetches them with each user's tokens.
type vendorLoad struct {
	emu   string
	users []vendorUser
	rng   *rand.Rand

	mu      sync.Mutex
	created []emuRecord
	errors  int
}

// base is where the records' times start: every record of a user is later
// than the previous one, so the newest reading per metric is unambiguous.
var vendorBase = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// create makes one record for user i: a WHOOP workout or an Oura daily
// readiness, each with a time of its own.
func (l *vendorLoad) create(ctx context.Context, i int) {
	l.mu.Lock()
	u := &l.users[i]
	n := u.n
	u.n++
	score := 40 + l.rng.IntN(55)
	l.mu.Unlock()
	var spec map[string]any
	switch u.vendor {
	case "whoop":
		start := vendorBase.Add(time.Duration(n) * 3 * time.Hour)
		spec = map[string]any{"user": u.user, "vendor": "whoop", "type": "workout",
			"start": start, "end": start.Add(45 * time.Minute), "values": map[string]float64{"strain": float64(score) / 5}}
	default:
		spec = map[string]any{"user": u.user, "vendor": "oura", "type": "daily_readiness",
			"day": vendorBase.AddDate(0, 0, n).Format("2006-01-02"), "values": map[string]float64{"score": float64(score)}}
	}
	var recs []struct {
		Vendor, Type, ID, User string
	}
	err := emuAdmin(context.WithoutCancel(ctx), l.emu, http.MethodPost, "/_admin/records", spec, &recs)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.errors++
		return
	}
	for _, r := range recs {
		l.created = append(l.created, emuRecord{vendor: r.Vendor, typ: r.Type, id: r.ID, user: u.user})
	}
}

// run creates a record for a random user every interval until ctx ends.
func (l *vendorLoad) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.mu.Lock()
		i := l.rng.IntN(len(l.users))
		l.mu.Unlock()
		l.create(ctx, i)
	}
}

// storm expires every access token at the emulator (the bridge's cached
// ones included, as a vendor-side invalidation does) and at once creates a
// record for every user: every job needs a refresh at the same moment.
func (l *vendorLoad) storm(ctx context.Context) error {
	if err := emuAdmin(ctx, l.emu, http.MethodPost, "/_admin/tokens/expire", map[string]string{}, nil); err != nil {
		return err
	}
	var wg sync.WaitGroup
	for i := range l.users {
		wg.Go(func() { l.create(ctx, i) })
	}
	wg.Wait()
	return nil
}
