// Package relay moves outbox entries from the persistence service to Kafka:
// lease a batch (long-poll), produce each entry, ack what Kafka accepted,
// nack what failed, dead-letter what can never be published.
//
// Per-user order is strict: a user's entry is sent only after its
// predecessor was accepted by Kafka. A batch is sent in waves; wave n holds
// the n-th entry of every user still in good standing, so a batch with many
// users needs few round trips, and a failed entry holds back (and nacks) all
// of its user's later entries. Sending a whole batch at once would be faster
// for a single hot user, but sarama can fail one batch of a partition and
// still deliver the next after bumping the producer epoch, which would put
// a user's events on the topic out of order. Across publishers and
// restarts, order rests on the persistence service handing a user's
// entries, in commit order, to one lease holder at a time.
//
// A send must have its outcome while the lease is held: if the lease ran
// out first, another holder could lease the same entries and publish them,
// and the late send would land after that holder's newer events. So every
// producer call is bounded (SendBound, derived from the producer's
// timeouts), no send starts unless the lease has at least twice that left
// (a call may queue behind another worker's in-flight request), and a
// heartbeat renews the lease, fenced by its token, while a batch is being
// sent. A lease that cannot be renewed in time stops the batch: what was
// not sent is given back.
//
// Delivery is at least once: an entry is acked only after Kafka accepted
// it, so a crash between the two publishes it again. Duplicates carry the
// same ce_id header (the event id) for consumers to drop.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/outbox"
)

// Config tunes the relay. Zero values take the defaults in parentheses.
type Config struct {
	// Holder names this publisher in leases (for observability).
	Holder string
	// Workers lease and publish concurrently (1). The persistence service
	// never leases one user's entries to two holders, so workers cannot
	// reorder a user's events.
	Workers int
	// BatchSize is the most entries per lease (500).
	BatchSize int
	// LeaseDuration is how long a lease lasts (30s); a batch in flight
	// renews it every third of that.
	LeaseDuration time.Duration
	// SendBound is the longest one producer call can take (the producer's
	// timeouts and retries: kafka.SendBound of its configuration), a third
	// of LeaseDuration. No send starts with less than twice this left on
	// the lease.
	SendBound time.Duration
	// WaitTimeout is the long-poll wait of a lease (5s). Zero means poll:
	// answer at once and sleep PollInterval after an empty lease.
	WaitTimeout time.Duration
	// PollInterval is the sleep after an empty lease when WaitTimeout is 0 (100ms).
	PollInterval time.Duration
	// MaxAttempts dead-letters an entry whose failures are neither clearly
	// transient nor clearly permanent once it has been sent and failed this
	// often (5); leases that never reached a send do not count. Transient
	// failures are retried forever.
	MaxAttempts int
	// BackoffInitial and BackoffMax bound the capped exponential backoff
	// with jitter after failures (250ms, 10s).
	BackoffInitial, BackoffMax time.Duration
}

func (c *Config) setDefaults() {
	if c.Holder == "" {
		c.Holder = "publisher"
	}
	if c.Workers <= 0 {
		c.Workers = 1
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.LeaseDuration <= 0 {
		c.LeaseDuration = 30 * time.Second
	}
	if c.SendBound <= 0 {
		c.SendBound = c.LeaseDuration / 3
	}
	if c.WaitTimeout < 0 {
		c.WaitTimeout = 0
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 100 * time.Millisecond
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.BackoffInitial <= 0 {
		c.BackoffInitial = 250 * time.Millisecond
	}
	if c.BackoffMax < c.BackoffInitial {
		c.BackoffMax = max(10*time.Second, c.BackoffInitial)
	}
}

// Producer is the part of sarama.SyncProducer the relay uses.
type Producer interface {
	SendMessages(msgs []*sarama.ProducerMessage) error
	SendMessage(msg *sarama.ProducerMessage) (partition int32, offset int64, err error)
}

// Relay relays the outbox to Kafka.
type Relay struct {
	cfg        Config
	outbox     *outbox.Client
	producer   Producer
	deadLetter Producer
	logger     *slog.Logger
	metrics    *Metrics
	tracer     trace.Tracer
	state      state
	pause      pauser

	statsMu sync.Mutex
	stats   outbox.Stats

	// onDeadLetter is called after a message reached the dead-letter
	// topic (the dead-letter view refreshes its count).
	onDeadLetter func()
	ping         func() error
}

// Deps are the relay's collaborators.
type Deps struct {
	Outbox *outbox.Client
	// Producer publishes to the event topics.
	Producer Producer
	// DeadLetter publishes to the dead-letter topic; its size limit must
	// admit the largest dead letter.
	DeadLetter Producer
	Metrics    *Metrics
	Logger     *slog.Logger
	// Ping succeeds when a broker answers (a metadata request). Before an
	// entry is dead-lettered for an unrecognized error, the brokers must
	// answer: an outage whose errors sarama words in a way Classify does
	// not know must never empty the outbox into the dead-letter topic.
	Ping func() error
	// OnDeadLetter, if set, is called after a message reached the
	// dead-letter topic.
	OnDeadLetter func()
	// TracerProvider creates the producer spans (default: the global one).
	TracerProvider trace.TracerProvider
}

// New returns a relay.
func New(cfg Config, d Deps) *Relay {
	cfg.setDefaults()
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.OnDeadLetter == nil {
		d.OnDeadLetter = func() {}
	}
	if d.Ping == nil {
		d.Ping = func() error { return nil }
	}
	if d.TracerProvider == nil {
		d.TracerProvider = otel.GetTracerProvider()
	}
	r := &Relay{
		cfg:          cfg,
		outbox:       d.Outbox,
		producer:     d.Producer,
		deadLetter:   d.DeadLetter,
		logger:       d.Logger.With("component", "relay"),
		metrics:      d.Metrics,
		tracer:       d.TracerProvider.Tracer("github.com/biobridge/bridge/services/publisher/internal/relay"),
		onDeadLetter: d.OnDeadLetter,
		ping:         d.Ping,
	}
	r.pause.initial, r.pause.max = cfg.BackoffInitial, cfg.BackoffMax
	// Until something fails, assume the brokers that answered at start
	// still do.
	r.setConnected(true)
	return r
}

// Counters returns the totals since start.
func (r *Relay) Counters() Counters { return r.state.counters() }

// Run relays until ctx is done. A batch in flight when ctx ends finishes
// its current wave, acks what Kafka accepted and releases the rest.
func (r *Relay) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for i := range r.cfg.Workers {
		holder := r.cfg.Holder
		if r.cfg.Workers > 1 {
			holder = fmt.Sprintf("%s/%d", holder, i)
		}
		wg.Go(func() { r.work(ctx, holder) })
	}
	wg.Wait()
	return nil
}

func (r *Relay) work(ctx context.Context, holder string) {
	leaseFailures := 0
	for {
		if err := r.pause.wait(ctx); err != nil {
			return
		}
		lease, err := r.outbox.Lease(ctx, outbox.LeaseRequest{
			Holder:     holder,
			MaxEntries: r.cfg.BatchSize,
			Duration:   r.cfg.LeaseDuration,
			Wait:       r.cfg.WaitTimeout,
		})
		if ctx.Err() != nil {
			if err == nil && len(lease.Entries) > 0 {
				r.release(lease, lease.Entries, "publisher stopping")
			}
			return
		}
		if err != nil {
			leaseFailures++
			r.metrics.leaseFailures.Inc()
			d := backoff(r.cfg.BackoffInitial, r.cfg.BackoffMax, leaseFailures)
			r.logger.WarnContext(ctx, "lease outbox failed", "err", err, "retry_in", d)
			if sleep(ctx, d) != nil {
				return
			}
			continue
		}
		leaseFailures = 0
		if len(lease.Entries) == 0 {
			if r.cfg.WaitTimeout == 0 && sleep(ctx, r.cfg.PollInterval) != nil {
				return
			}
			continue
		}
		r.metrics.batchEntries.Observe(float64(len(lease.Entries)))
		r.process(ctx, lease)
	}
}

// item is one leased entry on its way to Kafka.
type item struct {
	entry *persistencev1.OutboxEntry
	msg   *sarama.ProducerMessage
	span  trace.Span
	// deadLettered is set when the entry went to the dead-letter topic
	// instead of its own: it is acked but not counted as published.
	deadLettered bool
}

// nack is a group of entries to give back after a failed send: the failed
// head counts as a publish attempt (release, which gives back entries never
// sent, does not count one).
type nack struct {
	ids        []int64
	reason     string
	retryAfter time.Duration
}

// batch collects the outcome of one lease.
type batch struct {
	lease  outbox.Lease
	hold   *leaseHold
	acks   []*item
	nacks  []nack
	queues map[string][]*item // per key, in lease order
	keys   []string           // keys in order of first appearance
}

func (r *Relay) process(ctx context.Context, lease outbox.Lease) {
	b := &batch{lease: lease, queues: make(map[string][]*item), hold: newLeaseHold(lease)}
	for _, e := range lease.Entries {
		k := e.GetKey()
		if _, ok := b.queues[k]; !ok {
			b.keys = append(b.keys, k)
		}
		b.queues[k] = append(b.queues[k], &item{entry: e})
	}
	hctx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	heartbeat := make(chan struct{})
	go func() {
		defer close(heartbeat)
		r.heartbeat(hctx, b.hold)
	}()

	for ctx.Err() == nil && r.canSend(ctx, b.hold) {
		var wave []*item
		for _, k := range b.keys {
			if q := b.queues[k]; len(q) > 0 {
				wave = append(wave, q[0])
			}
		}
		if len(wave) == 0 {
			break
		}
		r.sendWave(ctx, b, wave)
	}
	stopHeartbeat()
	<-heartbeat
	// Whatever is left was not attempted (shutdown or lease running out):
	// give it back at once so the next lease can take it.
	var left []*persistencev1.OutboxEntry
	for _, k := range b.keys {
		for _, it := range b.queues[k] {
			left = append(left, it.entry)
		}
	}
	// Acks and nacks outlive ctx: what Kafka accepted must be recorded even
	// when the publisher is stopping, or it is published a second time.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	r.finish(fctx, b)
	if len(left) > 0 {
		r.release(lease, left, "not attempted before the lease ran out or the publisher stopped")
	}
}

// leaseHold is what a batch knows about its lease while sending.
type leaseHold struct {
	token string
	mu    sync.Mutex
	// expires is the earliest the lease can run out, on this process's
	// clock; lost is set when renewing found it expired or taken over.
	expires time.Time
	lost    bool
}

func newLeaseHold(l outbox.Lease) *leaseHold {
	return &leaseHold{token: l.Token, expires: l.Expires}
}

func (h *leaseHold) left() (time.Duration, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return time.Until(h.expires), !h.lost
}

// renew extends the lease by LeaseDuration; it reports whether the lease is
// still held.
func (r *Relay) renew(ctx context.Context, h *leaseHold) bool {
	rctx, cancel := context.WithTimeout(ctx, min(r.cfg.LeaseDuration/3, 5*time.Second))
	defer cancel()
	expires, ok, err := r.outbox.Renew(rctx, h.token, r.cfg.LeaseDuration)
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case err != nil:
		// Unknown: keep the last estimate, which runs out on its own.
		r.metrics.leaseRenewals.WithLabelValues("error").Inc()
		r.logger.WarnContext(ctx, "renew outbox lease failed", "err", err)
	case !ok:
		r.metrics.leaseRenewals.WithLabelValues("lost").Inc()
		h.lost = true
	default:
		r.metrics.leaseRenewals.WithLabelValues("renewed").Inc()
		h.expires = expires
	}
	return !h.lost && time.Until(h.expires) > 0
}

// heartbeat renews the lease every third of its duration until ctx ends.
func (r *Relay) heartbeat(ctx context.Context, h *leaseHold) {
	t := time.NewTicker(r.cfg.LeaseDuration / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !r.renew(ctx, h) {
			return
		}
	}
}

// canSend reports whether a producer call may start: the lease must outlast
// it with room to spare, or be renewed now so that it does.
func (r *Relay) canSend(ctx context.Context, h *leaseHold) bool {
	need := 2 * r.cfg.SendBound
	left, held := h.left()
	if held && left > need {
		return true
	}
	if held && r.renew(context.WithoutCancel(ctx), h) {
		if left, held = h.left(); held && left > need {
			return true
		}
	}
	r.metrics.leaseStops.Inc()
	r.logger.WarnContext(ctx, "stopping batch: the outbox lease would run out before a send could finish",
		"lease_left", left, "lease_held", held, "send_bound", r.cfg.SendBound)
	return false
}

// sendWave sends the head entry of each key once and settles each outcome.
func (r *Relay) sendWave(ctx context.Context, b *batch, wave []*item) {
	msgs := make([]*sarama.ProducerMessage, 0, len(wave))
	results := make(map[*item]error, len(wave))
	for _, it := range wave {
		if err := r.build(ctx, it); err != nil {
			results[it] = err
			continue
		}
		msgs = append(msgs, it.msg)
	}
	if len(msgs) > 0 {
		err := r.producer.SendMessages(msgs)
		var perrs sarama.ProducerErrors
		switch {
		case err == nil:
		case errors.As(err, &perrs):
			for _, pe := range perrs {
				if it, ok := pe.Msg.Metadata.(*item); ok {
					results[it] = pe.Err
				}
			}
		default:
			for _, m := range msgs {
				results[m.Metadata.(*item)] = err
			}
		}
	}

	succeeded, transient := 0, 0
	for _, it := range wave {
		err, failed := results[it]
		if !failed || err == nil {
			succeeded++
			r.published(b, it)
			continue
		}
		f := kafka.Classify(err)
		if f.Class == kafka.Permanent && f.Shared && len(msgs) > 1 && r.canSend(ctx, b.hold) {
			// The broker rejects a partition's whole batch; find out
			// whether this message is the culprit by sending it alone.
			if err = r.sendAlone(it); err == nil {
				succeeded++
				r.published(b, it)
				continue
			}
			f = kafka.Classify(err)
		}
		r.failed(ctx, it, f, err)
		attempts := int(it.entry.GetAttempts()) + 1
		if f.Class == kafka.Unknown && attempts >= r.cfg.MaxAttempts && r.ping() != nil {
			// The brokers do not answer: whatever the error says, this
			// is an outage, not a bad message.
			f = kafka.Failure{Class: kafka.Transient, Reason: f.Reason}
		}
		deadLetter := f.Class == kafka.Permanent || (f.Class == kafka.Unknown && attempts >= r.cfg.MaxAttempts)
		if deadLetter && !r.canSend(ctx, b.hold) {
			// No time left to dead-letter it safely: it comes back with
			// the next lease.
			deadLetter = false
			f = kafka.Failure{Class: kafka.Transient, Reason: "lease_expiring"}
		}
		if deadLetter {
			reason := f.Reason
			if f.Class == kafka.Unknown {
				reason = "max_attempts_exceeded"
			}
			if dlErr := r.sendDeadLetter(ctx, it, reason, err, attempts); dlErr == nil {
				it.deadLettered = true
				b.acks = append(b.acks, it)
				r.pop(b, it)
				continue
			} else {
				f = kafka.Classify(dlErr)
			}
		}
		if f.Class == kafka.Transient {
			transient++
		}
		r.holdBack(b, it, f.Reason, backoff(r.cfg.BackoffInitial, r.cfg.BackoffMax, attempts))
	}
	if transient > 0 {
		r.logger.WarnContext(ctx, "publish failed, retrying with backoff", "entries", transient,
			"wave", len(wave), "last_error", r.state.counters().LastError)
	}
	if succeeded > 0 {
		r.pause.reset()
		r.setConnected(true)
	} else if transient > 0 {
		// Nothing got through and the brokers look unwell: slow every
		// worker down, not just these entries.
		r.pause.trip()
	}
}

// build creates the producer span and the message of it.
func (r *Relay) build(ctx context.Context, it *item) error {
	e := it.entry
	parent := telemetry.Extract(context.WithoutCancel(ctx), func(k string) string {
		if k == kafka.HeaderTraceParent {
			return e.GetTraceparent()
		}
		return ""
	}, nil)
	sctx, span := r.tracer.Start(parent, "publish "+e.GetTopic(),
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.destination.name", e.GetTopic()),
			attribute.Int64("biobridge.outbox.id", e.GetId()),
			attribute.Int("biobridge.outbox.attempts", int(e.GetAttempts())),
		))
	it.span = span
	msg, err := kafka.BuildMessage(sctx, e)
	if err != nil {
		// Keep what we know so the dead letter can still be found.
		msg = &sarama.ProducerMessage{Topic: e.GetTopic(), Key: sarama.StringEncoder(e.GetKey())}
		it.msg = msg
		return err
	}
	msg.Metadata = it
	it.msg = msg
	span.SetAttributes(attribute.String("messaging.message.id", kafka.HeaderValue(msg.Headers, kafka.HeaderID)))
	return nil
}

// sendAlone sends a copy of it's message on its own.
func (r *Relay) sendAlone(it *item) error {
	m := it.msg
	_, _, err := r.producer.SendMessage(&sarama.ProducerMessage{
		Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: m.Headers, Metadata: it,
	})
	return err
}

func (r *Relay) published(b *batch, it *item) {
	if it.span != nil {
		it.span.End()
	}
	b.acks = append(b.acks, it)
	r.pop(b, it)
}

// pop removes it, the head of its key's queue.
func (r *Relay) pop(b *batch, it *item) {
	k := it.entry.GetKey()
	b.queues[k] = b.queues[k][1:]
}

// holdBack nacks it and every later entry of its key: none may be published
// before it.
func (r *Relay) holdBack(b *batch, it *item, reason string, retryAfter time.Duration) {
	k := it.entry.GetKey()
	q := b.queues[k]
	ids := make([]int64, 0, len(q))
	for _, x := range q {
		ids = append(ids, x.entry.GetId())
	}
	b.nacks = append(b.nacks, nack{ids: ids, reason: reason, retryAfter: retryAfter})
	b.queues[k] = nil
}

func (r *Relay) failed(ctx context.Context, it *item, f kafka.Failure, err error) {
	r.state.failed.Add(1)
	r.state.setLastError(f.Class.String() + " " + f.Reason + ": " + err.Error())
	r.metrics.failures.WithLabelValues(f.Class.String(), f.Reason).Inc()
	if f.Class == kafka.Transient && f.Reason != "not_authorized" && f.Reason != "producer_state" {
		r.setConnected(false)
	}
	if it.span != nil {
		it.span.RecordError(err)
		it.span.SetStatus(codes.Error, f.Reason)
		it.span.End()
		it.span = nil
	}
	if f.Class == kafka.Transient {
		// An outage fails every entry; sendWave logs one line per wave.
		return
	}
	r.logger.ErrorContext(ctx, "publish failed",
		"outbox_id", it.entry.GetId(), logging.UserID(it.entry.GetKey()),
		"topic", it.entry.GetTopic(), "class", f.Class.String(), "reason", f.Reason,
		"attempts", it.entry.GetAttempts()+1, "err", err)
}

// sendDeadLetter produces it's original message to the dead-letter topic.
func (r *Relay) sendDeadLetter(ctx context.Context, it *item, reason string, cause error, attempts int) error {
	info := kafka.DeadLetterInfo{Reason: reason, Error: cause.Error(), Attempts: attempts, FailedAt: time.Now()}
	_, _, err := r.deadLetter.SendMessage(kafka.DeadLetter(it.msg, info))
	if err != nil && kafka.Classify(err).Class == kafka.Permanent {
		// Too large even for the dead-letter topic: record the failure
		// without the value. The event itself stays in PostgreSQL.
		info.OmitValue = true
		_, _, err = r.deadLetter.SendMessage(kafka.DeadLetter(it.msg, info))
	}
	if err != nil {
		r.logger.ErrorContext(ctx, "dead-letter failed", "outbox_id", it.entry.GetId(), "reason", reason, "err", err)
		return fmt.Errorf("dead-letter outbox entry %d: %w", it.entry.GetId(), err)
	}
	r.state.deadLettered.Add(1)
	r.metrics.deadLettered.WithLabelValues(reason).Inc()
	r.logger.ErrorContext(ctx, "dead-lettered outbox entry", "outbox_id", it.entry.GetId(),
		logging.UserID(it.entry.GetKey()), "event_id", kafka.HeaderValue(it.msg.Headers, kafka.HeaderID),
		"reason", reason, "attempts", attempts, "omitted_value", info.OmitValue)
	r.onDeadLetter()
	return nil
}

// finish acks the published entries and nacks the failed ones.
func (r *Relay) finish(ctx context.Context, b *batch) {
	if len(b.acks) > 0 {
		ids := make([]int64, len(b.acks))
		for i, it := range b.acks {
			ids[i] = it.entry.GetId()
		}
		var err error
		for attempt := 1; attempt <= 3; attempt++ {
			if _, err = r.outbox.Ack(ctx, b.lease.Token, ids); err == nil {
				break
			}
			if sleep(ctx, time.Duration(attempt)*200*time.Millisecond) != nil {
				break
			}
		}
		if err != nil {
			// The entries are in Kafka; after the lease expires they are
			// published again (a duplicate with the same ce_id).
			r.metrics.ackFailures.Inc()
			r.logger.ErrorContext(ctx, "ack outbox failed", "entries", len(ids), "err", err)
		} else {
			now := time.Now()
			for _, it := range b.acks {
				if it.deadLettered {
					continue
				}
				r.state.published.Add(1)
				r.metrics.published.WithLabelValues(it.entry.GetTopic()).Inc()
				if c := it.entry.GetCreatedAt(); c != nil {
					r.metrics.latency.Observe(now.Sub(c.AsTime()).Seconds())
				}
			}
		}
	}
	for _, n := range b.nacks {
		if _, err := r.outbox.Nack(ctx, b.lease.Token, n.ids, n.reason, n.retryAfter, true); err != nil {
			// The lease expires and the entries come back anyway.
			r.logger.WarnContext(ctx, "nack outbox failed", "entries", len(n.ids), "err", err)
		}
	}
}

// release gives entries back without a delay.
func (r *Relay) release(lease outbox.Lease, entries []*persistencev1.OutboxEntry, reason string) {
	ids := make([]int64, len(entries))
	for i, e := range entries {
		ids[i] = e.GetId()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.outbox.Nack(ctx, lease.Token, ids, reason, 0, false); err != nil {
		r.logger.WarnContext(ctx, "release outbox entries failed", "entries", len(ids), "err", err)
	}
}

// Monitor refreshes the backlog gauges from the outbox and the Kafka
// connection state from ping every interval, until ctx is done.
func (r *Relay) Monitor(ctx context.Context, interval time.Duration, ping func() error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		r.refresh(ctx, ping)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Relay) refresh(ctx context.Context, ping func() error) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if st, err := r.outbox.Stats(sctx); err == nil {
		r.ObserveStats(st)
	} else if ctx.Err() == nil {
		r.logger.WarnContext(ctx, "outbox stats failed", "err", err)
	}
	if ping != nil {
		r.setConnected(ping() == nil)
	}
}

// ObserveStats records outbox stats in the gauges and as the last known
// stats.
func (r *Relay) ObserveStats(st outbox.Stats) {
	r.statsMu.Lock()
	r.stats = st
	r.statsMu.Unlock()
	r.metrics.outboxPending.Set(float64(st.Pending))
	r.metrics.outboxLeased.Set(float64(st.Leased))
	age := 0.0
	if !st.OldestPendingAt.IsZero() {
		age = max(0, time.Since(st.OldestPendingAt).Seconds())
	}
	r.metrics.oldestAge.Set(age)
}

// LastStats returns the last outbox stats the relay saw.
func (r *Relay) LastStats() outbox.Stats {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	return r.stats
}

func (r *Relay) setConnected(ok bool) {
	r.state.connected.Store(ok)
	if ok {
		r.metrics.kafkaConnected.Set(1)
	} else {
		r.metrics.kafkaConnected.Set(0)
	}
}

// backoff returns the capped exponential delay for the n-th failure (n >= 1)
// with "equal jitter": between half and all of it, so publishers that failed
// together do not retry in lockstep.
func backoff(initial, maxDelay time.Duration, n int) time.Duration {
	d := initial
	for i := 1; i < n && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	half := d / 2
	return half + rand.N(half+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// pauser is the relay-wide backoff after waves in which nothing got
// through: it keeps a broker outage from turning into a tight loop of
// leases and failed produces.
type pauser struct {
	initial, max time.Duration

	mu       sync.Mutex
	failures int
	until    time.Time
}

func (p *pauser) trip() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failures++
	p.until = time.Now().Add(backoff(p.initial, p.max, p.failures))
}

func (p *pauser) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failures = 0
	p.until = time.Time{}
}

func (p *pauser) wait(ctx context.Context) error {
	p.mu.Lock()
	d := time.Until(p.until)
	p.mu.Unlock()
	return sleep(ctx, d)
}
