package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/biobridge/bridge/emulator"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/services/devstack/stack"
)

// badKinds is the corpus mixed into every scenario's load. Every request
// of it must be refused, and nothing it names may be stored.
var badKinds = []string{
	"whoop-bad-signature", "oura-bad-signature", // signed with a wrong secret
	"whoop-replay", "oura-replay", // a valid signature from an hour ago (a captured delivery sent again)
	"whoop-malformed", "oura-malformed", // correctly signed, not a webhook body
	"whoop-oversize",                              // correctly signed, larger than the gateway's webhook limit
	"jwt-wrong-key", "jwt-expired", "jwt-garbage", // HealthKit pushes with bad user tokens
	"healthkit-malformed", // a valid user token, a body that is not a push
}

// badRequest is one request of the corpus as its sender saw it.
type badRequest struct {
	kind   string
	start  time.Time
	status int
}

// badSender sends the corpus. Its webhooks name records that exist at the
// emulator (created without a webhook) for users of its own, and its
// pushes carry samples for a user of its own: nothing of those users may
// reach PostgreSQL.
type badSender struct {
	pub     string // the bridge's public URL (the recorder)
	emu     string
	secrets map[string]string
	whoop   vendorUser // connected users whose records only bad input names
	oura    vendorUser
	hkUser  string
	whoopID int64
	ouraID  string
	rng     *rand.Rand
	client  *http.Client

	mu       sync.Mutex
	sent     []badRequest
	objects  []emuRecord // records the corpus named
	hkUUIDs  []string
	nRecords int
}

func newBadSender(ctx context.Context, pub, emu, prefix string, seed uint64) (*badSender, error) {
	b := &badSender{pub: pub, emu: emu, secrets: stack.DevSecrets(),
		whoop: vendorUser{user: prefix + "-bad-w", vendor: "whoop"}, oura: vendorUser{user: prefix + "-bad-o", vendor: "oura"},
		hkUser: prefix + "-bad-h", rng: rand.New(rand.NewPCG(seed, 77)), client: &http.Client{Timeout: 10 * time.Second}}
	if err := connectUsers(ctx, pub, []vendorUser{b.whoop, b.oura}); err != nil {
		return nil, err
	}
	var users []emulator.User
	if err := emuAdmin(ctx, emu, http.MethodGet, "/_admin/users", nil, &users); err != nil {
		return nil, err
	}
	for _, u := range users {
		switch u.Name {
		case b.whoop.user:
			b.whoopID = u.WhoopUserID
		case b.oura.user:
			b.ouraID = u.OuraUserID
		}
	}
	if b.whoopID == 0 || b.ouraID == "" {
		return nil, fmt.Errorf("bad-input users not at the emulator")
	}
	return b, nil
}

// object creates a record at the emulator without a webhook: real data
// that only a refused request names.
func (b *badSender) object(ctx context.Context, vendor string) (emuRecord, error) {
	b.mu.Lock()
	n := b.nRecords
	b.nRecords++
	b.mu.Unlock()
	var spec map[string]any
	if vendor == "whoop" {
		start := vendorBase.Add(time.Duration(n) * 3 * time.Hour)
		spec = map[string]any{"user": b.whoop.user, "vendor": "whoop", "type": "workout", "start": start, "end": start.Add(time.Hour), "no_webhook": true}
	} else {
		spec = map[string]any{"user": b.oura.user, "vendor": "oura", "type": "daily_readiness", "day": vendorBase.AddDate(0, 0, n).Format("2006-01-02"), "no_webhook": true}
	}
	var recs []struct{ Vendor, Type, ID, User string }
	if err := emuAdmin(ctx, b.emu, http.MethodPost, "/_admin/records", spec, &recs); err != nil {
		return emuRecord{}, err
	}
	if len(recs) == 0 {
		return emuRecord{}, fmt.Errorf("emulator created no record")
	}
	r := emuRecord{vendor: recs[0].Vendor, typ: recs[0].Type, id: recs[0].ID, user: spec["user"].(string)}
	b.mu.Lock()
	b.objects = append(b.objects, r)
	b.mu.Unlock()
	return r, nil
}

func (b *badSender) whoopBody(id string) []byte {
	body, _ := json.Marshal(map[string]any{"user_id": b.whoopID, "id": id, "type": "workout.updated", "trace_id": uuid.NewString()})
	return body
}

func (b *badSender) ouraBody(id string) []byte {
	body, _ := json.Marshal(map[string]any{"event_type": "create", "data_type": "daily_readiness", "object_id": id,
		"event_time": time.Now().UTC().Format("2006-01-02T15:04:05.000000-07:00"), "user_id": b.ouraID})
	return body
}

// post sends a webhook signed with secret at the clock time at.
func (b *badSender) post(ctx context.Context, vendor string, body []byte, secret string, at time.Time) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.pub+"/v1/webhooks/"+vendor, bytes.NewReader(body))
	if err != nil {
		return 0
	}
	req.Header.Set("Content-Type", "application/json")
	if vendor == "whoop" {
		ts := strconv.FormatInt(at.UnixMilli(), 10)
		req.Header.Set("X-WHOOP-Signature-Timestamp", ts)
		req.Header.Set("X-WHOOP-Signature", emulator.WhoopSignature(secret, ts, body))
	} else {
		ts := strconv.FormatInt(at.Unix(), 10)
		req.Header.Set("x-oura-timestamp", ts)
		req.Header.Set("x-oura-signature", emulator.OuraSignature(secret, ts, body))
	}
	return b.do(req)
}

func (b *badSender) do(req *http.Request) int {
	resp, err := b.client.Do(req)
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func (b *badSender) push(ctx context.Context, token string, body []byte) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.pub+"/v1/healthkit/samples", bytes.NewReader(body))
	if err != nil {
		return 0
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	return b.do(req)
}

func (b *badSender) hkBody() []byte {
	id := "bad-" + uuid.NewString()
	b.mu.Lock()
	b.hkUUIDs = append(b.hkUUIDs, id)
	b.mu.Unlock()
	at := vendorBase.Format(time.RFC3339)
	body, _ := json.Marshal(map[string]any{"samples": []hkSample{{UUID: id, Type: kinds[0].typ, Value: 60, Unit: kinds[0].unit, StartDate: at, EndDate: at,
		Source: map[string]any{"name": "Apple Watch", "bundle_id": "com.apple.health"}}}})
	return body
}

// one sends one request of the given kind.
func (b *badSender) one(ctx context.Context, kind string) error {
	whoopSecret, ouraSecret := b.secrets["WHOOP_CLIENT_SECRET"], b.secrets["OURA_CLIENT_SECRET"]
	vendor, _, _ := strings.Cut(kind, "-")
	var status int
	t0 := time.Now()
	switch kind {
	case "whoop-bad-signature", "oura-bad-signature", "whoop-replay", "oura-replay":
		r, err := b.object(ctx, vendor)
		if err != nil {
			return err
		}
		body, secret, at := b.whoopBody(r.id), whoopSecret, time.Now()
		if vendor == "oura" {
			body, secret = b.ouraBody(r.id), ouraSecret
		}
		if strings.HasSuffix(kind, "bad-signature") {
			secret = "not-the-" + secret
		} else {
			at = at.Add(-time.Hour)
		}
		status = b.post(ctx, vendor, body, secret, at)
	case "whoop-malformed":
		status = b.post(ctx, "whoop", []byte(`{"user_id": "x", "id": [1,2], "type":`), whoopSecret, time.Now())
	case "oura-malformed":
		status = b.post(ctx, "oura", []byte(`<xml>not json</xml>`), ouraSecret, time.Now())
	case "whoop-oversize":
		body := append(b.whoopBody(uuid.NewString()), bytes.Repeat([]byte(" "), 2<<20)...)
		status = b.post(ctx, "whoop", body, whoopSecret, time.Now())
	case "jwt-wrong-key", "jwt-expired", "jwt-garbage":
		var tok string
		var err error
		switch kind {
		case "jwt-wrong-key":
			tok, err = auth.IssueUserToken([]byte("an-attacker-key-that-is-long-enough-0123456789"), b.hkUser, time.Hour)
		case "jwt-expired":
			tok, err = auth.IssueUserToken(userSecret(), b.hkUser, -time.Minute)
		default:
			tok = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
		}
		if err != nil {
			return err
		}
		status = b.push(ctx, tok, b.hkBody())
	case "healthkit-malformed":
		tok, err := auth.IssueUserToken(userSecret(), b.hkUser, time.Hour)
		if err != nil {
			return err
		}
		status = b.push(ctx, tok, []byte(`{"samples": [{"uuid": 7, "type": {}}]`))
	default:
		return fmt.Errorf("unknown bad input %q", kind)
	}
	b.mu.Lock()
	b.sent = append(b.sent, badRequest{kind: kind, start: t0, status: status})
	b.mu.Unlock()
	return nil
}

// run sends the corpus, one request every interval, kinds in a seeded
// order, until ctx ends.
func (b *badSender) run(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		kind := badKinds[i%len(badKinds)]
		if i >= len(badKinds) {
			kind = badKinds[b.rng.IntN(len(badKinds))]
		}
		if err := b.one(context.WithoutCancel(ctx), kind); err != nil {
			return err
		}
	}
}

// skewed sends correctly signed WHOOP webhooks from a sender whose clock
// is skew behind, for records of the corpus's WHOOP user: every one must
// be refused as stale, none stored.
func (b *badSender) skewed(ctx context.Context, every, skew time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		r, err := b.object(context.WithoutCancel(ctx), "whoop")
		if err != nil {
			return err
		}
		t0 := time.Now()
		status := b.post(context.WithoutCancel(ctx), "whoop", b.whoopBody(r.id), b.secrets["WHOOP_CLIENT_SECRET"], t0.Add(-skew))
		b.mu.Lock()
		b.sent = append(b.sent, badRequest{kind: "whoop-clock-skew", start: t0, status: status})
		b.mu.Unlock()
	}
}
