package emulator

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/biobridge/bridge/emulator/internal/store"
	"github.com/biobridge/bridge/emulator/internal/webhooks"
)

// WhoopSignature is WHOOP's webhook signature: base64 (standard, padded) of
// HMAC-SHA256 keyed with the client secret over the
// X-WHOOP-Signature-Timestamp header value (milliseconds since the epoch)
// immediately followed by the raw body, no separator.
func WhoopSignature(clientSecret, timestamp string, body []byte) string {
	return webhooks.WhoopSignature(clientSecret, timestamp, body)
}

// OuraSignature is Oura's webhook signature: uppercase hex of HMAC-SHA256
// keyed with the client secret over the x-oura-timestamp header value
// (seconds since the epoch) followed by the raw body.
func OuraSignature(clientSecret, timestamp string, body []byte) string {
	return webhooks.OuraSignature(clientSecret, timestamp, body)
}

// event is a change that the vendor announces by webhook.
type event struct {
	vendor   Vendor
	user     *store.Person
	typ      string // WHOOP type ("sleep.updated") or Oura event_type ("create")
	id       string
	dataType string // Oura only
}

func whoopEv(u *store.Person, typ, id string) event {
	return event{vendor: Whoop, user: u, typ: typ, id: id}
}

func ouraEv(u *store.Person, eventType string, d *store.OuraDoc) event {
	return event{vendor: Oura, user: u, typ: eventType, id: d.ID, dataType: d.DataType}
}

// whoopWebhook and ouraWebhook are the bodies, field order as the vendors
// send them.
type whoopWebhook struct {
	UserID  int64  `json:"user_id"`
	ID      string `json:"id"`
	Type    string `json:"type"`
	TraceID string `json:"trace_id"`
}

type ouraWebhook struct {
	EventType string `json:"event_type"`
	DataType  string `json:"data_type"`
	ObjectID  string `json:"object_id"`
	EventTime string `json:"event_time"`
	UserID    string `json:"user_id"`
}

// planLocked turns events into delivery jobs: bodies, targets, and the
// drop/duplicate/reorder draws, all under mu so they follow the seed.
func (e *Emulator) planLocked(evs []event) []*webhooks.Job {
	var jobs []*webhooks.Job
	now := e.st.Now()
	for _, ev := range evs {
		var body []byte
		var targets []*webhooks.Job
		switch ev.vendor {
		case Whoop:
			body, _ = json.Marshal(whoopWebhook{UserID: ev.user.WhoopID, ID: ev.id, Type: ev.typ, TraceID: e.st.UUIDLocked()})
			if e.whoopTarget != "" {
				targets = append(targets, &webhooks.Job{Vendor: Whoop, URL: e.whoopTarget})
			}
		case Oura:
			// Receivers tell a new change of a document from a redelivery by
			// event_time, so two events never share one, even within a
			// microsecond.
			et := e.cfg.Now().UTC().Truncate(time.Microsecond)
			if !et.After(e.lastOuraEvent) {
				et = e.lastOuraEvent.Add(time.Microsecond)
			}
			e.lastOuraEvent = et
			body, _ = json.Marshal(ouraWebhook{
				EventType: ev.typ, DataType: ev.dataType, ObjectID: ev.id,
				EventTime: et.Format("2006-01-02T15:04:05.000000-07:00"), UserID: ev.user.OuraID,
			})
			for _, s := range e.st.SubOrder {
				if s.EventType == ev.typ && s.DataType == ev.dataType && s.ExpirationTime.After(now) {
					targets = append(targets, &webhooks.Job{Vendor: Oura, URL: s.CallbackURL, SubID: s.ID})
				}
			}
			key := ev.typ + "/" + ev.dataType
			if len(targets) == 0 && e.ouraTarget != "" && !e.st.ImplicitRemoved[key] {
				targets = append(targets, &webhooks.Job{Vendor: Oura, URL: e.ouraTarget, ImplKey: key})
			}
		}
		if len(targets) == 0 {
			e.count(ev.vendor, func(c *VendorCounters) { c.WebhooksUnrouted++ })
			continue
		}
		for _, t := range targets {
			t.Body, t.Hold = body, e.st.Faults.WebhookReorder
			if e.st.ChanceLocked(e.st.Faults.WebhookDropRate) {
				e.count(ev.vendor, func(c *VendorCounters) { c.WebhooksDropped++ })
				continue
			}
			jobs = append(jobs, t)
			if e.st.ChanceLocked(e.st.Faults.WebhookDuplicateRate) {
				dup := *t
				jobs = append(jobs, &dup)
				e.count(ev.vendor, func(c *VendorCounters) { c.WebhooksDuplicated++ })
			}
		}
	}
	return jobs
}

// WaitWebhooks blocks until no delivery is queued, in flight, held or
// waiting for a retry, or ctx ends. Tests call it before asserting on what
// the receiver got.
func (e *Emulator) WaitWebhooks(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for e.hooks.Pending() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for webhooks (%d pending): %w", e.hooks.Pending(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// hookHost is the webhook pool's view of the emulator's state.
type hookHost struct{ e *Emulator }

// Shuffle draws the permutation from the seeded source under mu.
func (h hookHost) Shuffle(n int, swap func(i, j int)) {
	h.e.st.Mu.Lock()
	defer h.e.st.Mu.Unlock()
	h.e.st.RandLocked().Shuffle(n, swap)
}

// Gone cancels the subscription an Oura 410 answered for.
func (h hookHost) Gone(j *webhooks.Job) {
	h.e.st.Mu.Lock()
	defer h.e.st.Mu.Unlock()
	if j.SubID != "" {
		h.e.st.RemoveSubLocked(j.SubID)
	} else {
		h.e.st.ImplicitRemoved[j.ImplKey] = true
	}
}

func newPool(e *Emulator) *webhooks.Pool {
	c := e.cfg
	return webhooks.NewPool(webhooks.Config{
		QueueSize: c.WebhookQueueSize, Workers: c.WebhookWorkers, ReorderWindow: c.ReorderWindow,
		RetryDelays: c.WebhookRetryDelays, Timeout: c.WebhookTimeout, HTTPClient: c.HTTPClient,
		WhoopSecret: c.WhoopClientSecret, OuraSecret: c.OuraClientSecret, Now: c.Now, Log: e.log,
	}, hookHost{e}, e.counters)
}
