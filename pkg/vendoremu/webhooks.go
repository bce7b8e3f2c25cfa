package vendoremu

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// WhoopSignature is WHOOP's webhook signature: base64 (standard, padded) of
// HMAC-SHA256 keyed with the client secret over the
// X-WHOOP-Signature-Timestamp header value (milliseconds since the epoch)
// immediately followed by the raw body, no separator.
func WhoopSignature(clientSecret, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, []byte(clientSecret))
	m.Write([]byte(timestamp))
	m.Write(body)
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// OuraSignature is Oura's webhook signature: uppercase hex of HMAC-SHA256
// keyed with the client secret over the x-oura-timestamp header value
// (seconds since the epoch) followed by the raw body.
func OuraSignature(clientSecret, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, []byte(clientSecret))
	m.Write([]byte(timestamp))
	m.Write(body)
	return strings.ToUpper(hex.EncodeToString(m.Sum(nil)))
}

// event is a change that the vendor announces by webhook.
type event struct {
	vendor   Vendor
	user     *user
	typ      string // WHOOP type ("sleep.updated") or Oura event_type ("create")
	id       string
	dataType string // Oura only
}

func whoopEv(u *user, typ, id string) event { return event{vendor: Whoop, user: u, typ: typ, id: id} }

func ouraEv(u *user, eventType string, d *ouraDoc) event {
	return event{vendor: Oura, user: u, typ: eventType, id: d.id, dataType: d.dataType}
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

// job is one delivery of one event body to one URL.
type job struct {
	vendor  Vendor
	url     string
	body    []byte
	attempt int
	hold    bool   // reorder: held and shuffled before it is queued
	subID   string // explicit Oura subscription, cancelled by a 410
	implKey string // implicit Oura subscription "event_type/data_type"
}

// planLocked turns events into delivery jobs: bodies, targets, and the
// drop/duplicate/reorder draws, all under mu so they follow the seed.
func (e *Emulator) planLocked(evs []event) []*job {
	var jobs []*job
	now := e.now()
	for _, ev := range evs {
		var body []byte
		var targets []*job
		switch ev.vendor {
		case Whoop:
			body, _ = json.Marshal(whoopWebhook{UserID: ev.user.whoopID, ID: ev.id, Type: ev.typ, TraceID: e.uuidLocked()})
			if e.whoopTarget != "" {
				targets = append(targets, &job{vendor: Whoop, url: e.whoopTarget})
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
				EventTime: et.Format("2006-01-02T15:04:05.000000-07:00"), UserID: ev.user.ouraID,
			})
			for _, s := range e.subOrder {
				if s.EventType == ev.typ && s.DataType == ev.dataType && s.ExpirationTime.After(now) {
					targets = append(targets, &job{vendor: Oura, url: s.CallbackURL, subID: s.ID})
				}
			}
			key := ev.typ + "/" + ev.dataType
			if len(targets) == 0 && e.ouraTarget != "" && !e.implicitRemoved[key] {
				targets = append(targets, &job{vendor: Oura, url: e.ouraTarget, implKey: key})
			}
		}
		if len(targets) == 0 {
			e.count(ev.vendor, func(c *VendorCounters) { c.WebhooksUnrouted++ })
			continue
		}
		for _, t := range targets {
			t.body, t.hold = body, e.faults.WebhookReorder
			if e.chanceLocked(e.faults.WebhookDropRate) {
				e.count(ev.vendor, func(c *VendorCounters) { c.WebhooksDropped++ })
				continue
			}
			jobs = append(jobs, t)
			if e.chanceLocked(e.faults.WebhookDuplicateRate) {
				dup := *t
				jobs = append(jobs, &dup)
				e.count(ev.vendor, func(c *VendorCounters) { c.WebhooksDuplicated++ })
			}
		}
	}
	return jobs
}

// deliverer is the bounded worker pool that sends webhooks, retrying
// non-2xx answers and timeouts on the configured schedule.
type deliverer struct {
	e       *Emulator
	queue   chan *job
	done    chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	pending atomic.Int64

	mu      sync.Mutex // guards below; never held while taking e.mu
	held    []*job
	holding bool
	timers  map[*time.Timer]*job
	closed  bool
}

func newDeliverer(e *Emulator) *deliverer {
	ctx, cancel := context.WithCancel(context.Background())
	d := &deliverer{
		e: e, queue: make(chan *job, e.cfg.WebhookQueueSize), done: make(chan struct{}),
		ctx: ctx, cancel: cancel, timers: map[*time.Timer]*job{},
	}
	for range e.cfg.WebhookWorkers {
		d.wg.Add(1)
		go d.work()
	}
	return d
}

// submit hands jobs to the pool. It waits while the queue is full.
func (d *deliverer) submit(jobs []*job) {
	for _, j := range jobs {
		d.pending.Add(1)
		if j.hold {
			d.holdJob(j)
			continue
		}
		d.enqueue(j)
	}
}

func (d *deliverer) enqueue(j *job) {
	select {
	case d.queue <- j:
	case <-d.done:
		d.pending.Add(-1)
	}
}

func (d *deliverer) holdJob(j *job) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		d.pending.Add(-1)
		return
	}
	d.held = append(d.held, j)
	if !d.holding {
		d.holding = true
		time.AfterFunc(d.e.cfg.ReorderWindow, d.release)
	}
}

// release queues the held jobs shuffled, never in their original order.
func (d *deliverer) release() {
	d.mu.Lock()
	batch := d.held
	d.held, d.holding = nil, false
	closed := d.closed
	d.mu.Unlock()
	if closed {
		d.pending.Add(-int64(len(batch)))
		return
	}
	if len(batch) > 1 {
		orig := append([]*job(nil), batch...)
		d.e.mu.Lock()
		d.e.rng.Shuffle(len(batch), func(i, k int) { batch[i], batch[k] = batch[k], batch[i] })
		d.e.mu.Unlock()
		same := true
		for i := range batch {
			same = same && batch[i] == orig[i]
		}
		if same {
			batch[0], batch[1] = batch[1], batch[0]
		}
	}
	for _, j := range batch {
		d.enqueue(j)
	}
}

func (d *deliverer) work() {
	defer d.wg.Done()
	for {
		select {
		case <-d.done:
			return
		case j := <-d.queue:
			d.deliver(j)
		}
	}
}

func (d *deliverer) deliver(j *job) {
	e := d.e
	status, err := d.post(j)
	e.count(j.vendor, func(c *VendorCounters) { c.WebhookAttempts++ })
	switch {
	case err == nil && status >= 200 && status < 300:
		e.count(j.vendor, func(c *VendorCounters) { c.WebhooksDelivered++ })
		d.pending.Add(-1)
	case err == nil && status == http.StatusGone && j.vendor == Oura:
		// Oura: answering 410 cancels the subscription.
		e.mu.Lock()
		if j.subID != "" {
			e.removeSubLocked(j.subID)
		} else {
			e.implicitRemoved[j.implKey] = true
		}
		e.mu.Unlock()
		e.count(j.vendor, func(c *VendorCounters) { c.WebhooksFailed++; c.SubscriptionsGone++ })
		d.pending.Add(-1)
	case j.attempt < len(e.cfg.WebhookRetryDelays):
		e.count(j.vendor, func(c *VendorCounters) { c.WebhookRetries++ })
		delay := e.cfg.WebhookRetryDelays[j.attempt]
		j.attempt++
		d.retryAfter(delay, j)
	default:
		e.count(j.vendor, func(c *VendorCounters) { c.WebhooksFailed++ })
		d.pending.Add(-1)
		e.log.Warn("webhook delivery gave up", "vendor", string(j.vendor), "attempts", j.attempt+1,
			"status", status, "error", err)
	}
}

func (d *deliverer) retryAfter(delay time.Duration, j *job) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		d.pending.Add(-1)
		return
	}
	var t *time.Timer
	t = time.AfterFunc(delay, func() {
		d.mu.Lock()
		delete(d.timers, t)
		d.mu.Unlock()
		d.enqueue(j)
	})
	d.timers[t] = j
}

// post signs the body now (each attempt carries a fresh timestamp, the body
// is the same bytes) and sends it.
func (d *deliverer) post(j *job) (int, error) {
	e := d.e
	now := e.cfg.Now()
	ctx, cancel := context.WithTimeout(d.ctx, e.cfg.WebhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, j.url, bytes.NewReader(j.body))
	if err != nil {
		return 0, fmt.Errorf("build webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	switch j.vendor {
	case Whoop:
		ts := strconv.FormatInt(now.UnixMilli(), 10)
		req.Header.Set("X-WHOOP-Signature-Timestamp", ts)
		req.Header.Set("X-WHOOP-Signature", WhoopSignature(e.cfg.WhoopClientSecret, ts, j.body))
		req.Header.Set("User-Agent", "WHOOP-Webhooks (biobridge vendoremu)")
	case Oura:
		ts := strconv.FormatInt(now.Unix(), 10)
		req.Header.Set("x-oura-timestamp", ts)
		req.Header.Set("x-oura-signature", OuraSignature(e.cfg.OuraClientSecret, ts, j.body))
		req.Header.Set("User-Agent", "Oura-Webhooks (biobridge vendoremu)")
	}
	resp, err := e.cfg.HTTPClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("post webhook: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if err := resp.Body.Close(); err != nil {
		return resp.StatusCode, fmt.Errorf("close webhook response: %w", err)
	}
	return resp.StatusCode, nil
}

func (d *deliverer) close(ctx context.Context) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	for t := range d.timers {
		if t.Stop() {
			d.pending.Add(-1)
		}
	}
	d.timers = map[*time.Timer]*job{}
	d.mu.Unlock()
	close(d.done)
	d.cancel()
	finished := make(chan struct{})
	go func() {
		d.wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for webhook workers: %w", ctx.Err())
	}
}

// WaitWebhooks blocks until no delivery is queued, in flight, held or
// waiting for a retry, or ctx ends. Tests call it before asserting on what
// the receiver got.
func (e *Emulator) WaitWebhooks(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for e.hooks.pending.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for webhooks (%d pending): %w", e.hooks.pending.Load(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}
