// Package groupcommit merges concurrent small write calls into shared
// transactions. Many concurrent single-event writes (persistence's
// WriteEvents, ingest's webhook jobs) would otherwise each pay a commit (a
// WAL flush and a round trip); batched, they share one. Every caller still
// waits for the commit of its own ops: nothing is acknowledged from memory.
//
// A former goroutine waits for a free transaction slot, takes the first
// queued call, then gathers more calls until the window elapses or the
// batch is full, and runs the batch on the slot. While every slot is busy,
// calls queue up and the next batch picks them all up at once, so under
// load batches grow by themselves and at low load a call waits at most
// the window.
//
// Each call gets its own results. When a merged transaction fails, the
// calls are retried one transaction each, so a call whose data breaks a
// transaction fails alone and never takes the others' valid events down.
package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ApplyFunc runs ops in one transaction and returns one result per op, in
// order. It returns only after the transaction committed (or failed); work
// that must be visible before the callers are answered (a cache update)
// belongs in it too.
type ApplyFunc[Op, Result any] func(ctx context.Context, ops []Op) ([]Result, error)

// Metrics are the committer's optional instruments (nil fields are not
// observed).
type Metrics struct {
	// Requests observes the calls merged into each transaction.
	Requests prometheus.Observer
	// Wait observes, in seconds, how long each call queued before its
	// transaction started.
	Wait prometheus.Observer
	// Isolations counts merged transactions that failed and were retried
	// call by call.
	Isolations prometheus.Counter
}

// Config tunes the committer.
type Config struct {
	// Window is how long a batch waits for more calls (default 2ms; 0
	// takes only what is already queued).
	Window time.Duration
	// MaxOps closes a batch at this many ops (default 1000). A single call
	// with more ops runs alone.
	MaxOps int
	// Concurrency is the number of transactions in flight (default 4).
	Concurrency int
	// TxTimeout bounds one transaction (default 30s).
	TxTimeout time.Duration
}

type call[Op, Result any] struct {
	ctx      context.Context
	ops      []Op
	enqueued time.Time
	done     chan outcome[Result]
}

type outcome[Result any] struct {
	results []Result
	err     error
}

// Committer batches calls of ops into transactions run by an ApplyFunc.
type Committer[Op, Result any] struct {
	cfg   Config
	apply ApplyFunc[Op, Result]
	m     Metrics
	queue chan *call[Op, Result]
	slots chan struct{}
	// closing is closed by Close; transactions in flight still finish.
	closing chan struct{}
	done    chan struct{}
}

// ErrClosed is returned for calls made after Close.
var ErrClosed = errors.New("group commit: closed")

// New starts a committer.
func New[Op, Result any](cfg Config, apply ApplyFunc[Op, Result], m Metrics) *Committer[Op, Result] {
	if cfg.Window < 0 {
		cfg.Window = 0
	}
	if cfg.MaxOps <= 0 {
		cfg.MaxOps = 1000
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.TxTimeout <= 0 {
		cfg.TxTimeout = 30 * time.Second
	}
	c := &Committer[Op, Result]{
		cfg: cfg, apply: apply, m: m,
		queue:   make(chan *call[Op, Result], 4096),
		slots:   make(chan struct{}, cfg.Concurrency),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	go c.run()
	return c
}

// Do runs ops in a (possibly shared) transaction and returns their results.
// If ctx ends first, Do returns ctx's error; the ops may still commit.
func (c *Committer[Op, Result]) Do(ctx context.Context, ops []Op) ([]Result, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	cl := &call[Op, Result]{ctx: ctx, ops: ops, enqueued: time.Now(), done: make(chan outcome[Result], 1)}
	select {
	case c.queue <- cl:
	case <-c.done:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case o := <-cl.done:
		return o.results, o.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		// The committer stopped; the call was answered by the drain or
		// never taken.
		select {
		case o := <-cl.done:
			return o.results, o.err
		default:
			return nil, ErrClosed
		}
	}
}

// Close stops taking calls, waits for the transactions in flight and
// answers queued calls with ErrClosed. Call it after the gRPC server has
// stopped, so no call is still arriving.
func (c *Committer[Op, Result]) Close() {
	select {
	case <-c.closing:
	default:
		close(c.closing)
	}
	<-c.done
}

func (c *Committer[Op, Result]) run() {
	defer close(c.done)
	var carry *call[Op, Result]
	for {
		// A free slot first: while all are busy, calls accumulate.
		select {
		case c.slots <- struct{}{}:
		case <-c.closing:
			c.drain(carry)
			return
		}
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-c.queue:
			case <-c.closing:
				<-c.slots
				c.drain(nil)
				return
			}
		}
		batch := []*call[Op, Result]{first}
		n := len(first.ops)
		var timer <-chan time.Time
		var t *time.Timer
		if c.cfg.Window > 0 {
			t = time.NewTimer(c.cfg.Window)
			timer = t.C
		}
	gather:
		for n < c.cfg.MaxOps {
			// Take what is queued without waiting, then wait for the window.
			select {
			case cl := <-c.queue:
				if n+len(cl.ops) > c.cfg.MaxOps {
					carry = cl
					break gather
				}
				batch = append(batch, cl)
				n += len(cl.ops)
				continue
			default:
			}
			if timer == nil {
				break gather
			}
			select {
			case cl := <-c.queue:
				if n+len(cl.ops) > c.cfg.MaxOps {
					carry = cl
					break gather
				}
				batch = append(batch, cl)
				n += len(cl.ops)
			case <-timer:
				break gather
			case <-c.closing:
				break gather
			}
		}
		if t != nil {
			t.Stop()
		}
		go func() {
			defer func() { <-c.slots }()
			c.commit(batch)
		}()
	}
}

// drain waits for the transactions in flight and fails queued calls.
func (c *Committer[Op, Result]) drain(carry *call[Op, Result]) {
	for range cap(c.slots) {
		c.slots <- struct{}{}
	}
	if carry != nil {
		carry.done <- outcome[Result]{err: ErrClosed}
	}
	for {
		select {
		case cl := <-c.queue:
			cl.done <- outcome[Result]{err: ErrClosed}
		default:
			return
		}
	}
}

func (c *Committer[Op, Result]) commit(batch []*call[Op, Result]) {
	now := time.Now()
	live := batch[:0:0]
	for _, cl := range batch {
		if c.m.Wait != nil {
			c.m.Wait.Observe(now.Sub(cl.enqueued).Seconds())
		}
		if cl.ctx.Err() != nil {
			// The caller left before its transaction started: skip it
			// rather than commit data nobody will be told about.
			cl.done <- outcome[Result]{err: cl.ctx.Err()}
			continue
		}
		live = append(live, cl)
	}
	if len(live) == 0 {
		return
	}
	if c.m.Requests != nil {
		c.m.Requests.Observe(float64(len(live)))
	}
	var ops []Op
	if len(live) == 1 {
		ops = live[0].ops
	} else {
		for _, cl := range live {
			ops = append(ops, cl.ops...)
		}
	}
	results, err := c.run1(ops)
	if err == nil {
		off := 0
		for _, cl := range live {
			cl.done <- outcome[Result]{results: results[off : off+len(cl.ops)]}
			off += len(cl.ops)
		}
		return
	}
	if len(live) == 1 {
		live[0].done <- outcome[Result]{err: err}
		return
	}
	// Isolate: one transaction per call, so only the call that breaks a
	// transaction sees the error.
	if c.m.Isolations != nil {
		c.m.Isolations.Inc()
	}
	for _, cl := range live {
		res, err := c.run1(cl.ops)
		cl.done <- outcome[Result]{results: res, err: err}
	}
}

func (c *Committer[Op, Result]) run1(ops []Op) ([]Result, error) {
	// Not the callers' contexts: one caller giving up must not abort a
	// transaction that others share.
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.TxTimeout)
	defer cancel()
	results, err := c.apply(ctx, ops)
	if err != nil {
		return nil, err
	}
	if len(results) != len(ops) {
		return nil, fmt.Errorf("group commit: %d results for %d ops", len(results), len(ops))
	}
	return results, nil
}
