package webhooks

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/biobridge/bridge/emulator/internal/store"
)

// Job is one delivery of one event body to one URL.
type Job struct {
	Vendor store.Vendor
	URL    string
	Body   []byte
	// Hold makes the pool hold the job for Config.ReorderWindow and queue
	// it shuffled with the others held meanwhile (injected reordering).
	Hold bool
	// SubID names the explicit Oura subscription the job was routed by;
	// ImplKey ("event_type/data_type") the implicit one. A 410 cancels it.
	SubID   string
	ImplKey string

	attempt int
}

// Config is how the pool delivers.
type Config struct {
	QueueSize     int
	Workers       int
	ReorderWindow time.Duration
	// RetryDelays are the waits before each retry; their number is the
	// number of retries.
	RetryDelays []time.Duration
	Timeout     time.Duration
	HTTPClient  *http.Client
	// WhoopSecret and OuraSecret key the signatures.
	WhoopSecret string
	OuraSecret  string
	// Now is the clock the signature timestamps come from.
	Now func() time.Time
	Log *slog.Logger
}

// Host is what the pool needs from the emulator's state.
type Host interface {
	// Shuffle permutes n held jobs with the seeded random source, under
	// the state lock so the draw is ordered with every other draw.
	Shuffle(n int, swap func(i, j int))
	// Gone cancels the Oura subscription a 410 answered for j.
	Gone(j *Job)
}

// Pool is the bounded worker pool that sends webhooks, retrying non-2xx
// answers and timeouts on the configured schedule.
type Pool struct {
	cfg      Config
	host     Host
	counters *store.CounterSet
	queue    chan *Job
	done     chan struct{}
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	pending  atomic.Int64

	mu      sync.Mutex // guards below; never held while taking the host's lock
	held    []*Job
	holding bool
	timers  map[*time.Timer]*Job
	closed  bool
}

// NewPool starts cfg.Workers workers; Close stops them.
func NewPool(cfg Config, host Host, counters *store.CounterSet) *Pool {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		cfg: cfg, host: host, counters: counters,
		queue: make(chan *Job, cfg.QueueSize), done: make(chan struct{}),
		ctx: ctx, cancel: cancel, timers: map[*time.Timer]*Job{},
	}
	for range cfg.Workers {
		p.wg.Add(1)
		go p.work()
	}
	return p
}

// Submit hands jobs to the pool. It waits while the queue is full.
func (p *Pool) Submit(jobs []*Job) {
	for _, j := range jobs {
		p.pending.Add(1)
		if j.Hold {
			p.holdJob(j)
			continue
		}
		p.enqueue(j)
	}
}

func (p *Pool) enqueue(j *Job) {
	select {
	case p.queue <- j:
	case <-p.done:
		p.pending.Add(-1)
	}
}

func (p *Pool) holdJob(j *Job) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.pending.Add(-1)
		return
	}
	p.held = append(p.held, j)
	if !p.holding {
		p.holding = true
		time.AfterFunc(p.cfg.ReorderWindow, p.release)
	}
}

// release queues the held jobs shuffled, never in their original order.
func (p *Pool) release() {
	p.mu.Lock()
	batch := p.held
	p.held, p.holding = nil, false
	closed := p.closed
	p.mu.Unlock()
	if closed {
		p.pending.Add(-int64(len(batch)))
		return
	}
	if len(batch) > 1 {
		orig := append([]*Job(nil), batch...)
		p.host.Shuffle(len(batch), func(i, k int) { batch[i], batch[k] = batch[k], batch[i] })
		same := true
		for i := range batch {
			same = same && batch[i] == orig[i]
		}
		if same {
			batch[0], batch[1] = batch[1], batch[0]
		}
	}
	for _, j := range batch {
		p.enqueue(j)
	}
}

func (p *Pool) work() {
	defer p.wg.Done()
	for {
		select {
		case <-p.done:
			return
		case j := <-p.queue:
			p.deliver(j)
		}
	}
}

func (p *Pool) deliver(j *Job) {
	status, err := p.post(j)
	p.counters.Count(j.Vendor, func(c *store.VendorCounters) { c.WebhookAttempts++ })
	switch {
	case err == nil && status >= 200 && status < 300:
		p.counters.Count(j.Vendor, func(c *store.VendorCounters) { c.WebhooksDelivered++ })
		p.pending.Add(-1)
	case err == nil && status == http.StatusGone && j.Vendor == store.Oura:
		// Oura: answering 410 cancels the subscription.
		p.host.Gone(j)
		p.counters.Count(j.Vendor, func(c *store.VendorCounters) { c.WebhooksFailed++; c.SubscriptionsGone++ })
		p.pending.Add(-1)
	case j.attempt < len(p.cfg.RetryDelays):
		p.counters.Count(j.Vendor, func(c *store.VendorCounters) { c.WebhookRetries++ })
		delay := p.cfg.RetryDelays[j.attempt]
		j.attempt++
		p.retryAfter(delay, j)
	default:
		p.counters.Count(j.Vendor, func(c *store.VendorCounters) { c.WebhooksFailed++ })
		p.pending.Add(-1)
		p.cfg.Log.Warn("webhook delivery gave up", "vendor", string(j.Vendor), "attempts", j.attempt+1,
			"status", status, "err", err)
	}
}

func (p *Pool) retryAfter(delay time.Duration, j *Job) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.pending.Add(-1)
		return
	}
	var t *time.Timer
	t = time.AfterFunc(delay, func() {
		p.mu.Lock()
		delete(p.timers, t)
		p.mu.Unlock()
		p.enqueue(j)
	})
	p.timers[t] = j
}

// post signs the body now (each attempt carries a fresh timestamp, the body
// is the same bytes) and sends it.
func (p *Pool) post(j *Job) (int, error) {
	now := p.cfg.Now()
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, j.URL, bytes.NewReader(j.Body))
	if err != nil {
		return 0, fmt.Errorf("build webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	switch j.Vendor {
	case store.Whoop:
		ts := strconv.FormatInt(now.UnixMilli(), 10)
		req.Header.Set("X-WHOOP-Signature-Timestamp", ts)
		req.Header.Set("X-WHOOP-Signature", WhoopSignature(p.cfg.WhoopSecret, ts, j.Body))
		req.Header.Set("User-Agent", "WHOOP-Webhooks (biobridge vendoremu)")
	case store.Oura:
		ts := strconv.FormatInt(now.Unix(), 10)
		req.Header.Set("x-oura-timestamp", ts)
		req.Header.Set("x-oura-signature", OuraSignature(p.cfg.OuraSecret, ts, j.Body))
		req.Header.Set("User-Agent", "Oura-Webhooks (biobridge vendoremu)")
	}
	resp, err := p.cfg.HTTPClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("post webhook: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if err := resp.Body.Close(); err != nil {
		return resp.StatusCode, fmt.Errorf("close webhook response: %w", err)
	}
	return resp.StatusCode, nil
}

// Pending is how many deliveries are queued, in flight, held or waiting
// for a retry.
func (p *Pool) Pending() int64 { return p.pending.Load() }

// Close stops the workers and the retry timers; queued deliveries are
// abandoned. It waits for in-flight posts until ctx ends.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for t := range p.timers {
		if t.Stop() {
			p.pending.Add(-1)
		}
	}
	p.timers = map[*time.Timer]*Job{}
	p.mu.Unlock()
	close(p.done)
	p.cancel()
	finished := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for webhook workers: %w", ctx.Err())
	}
}
