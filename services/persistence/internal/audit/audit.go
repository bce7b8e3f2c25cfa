// Package audit records who read whose data without slowing the read: a
// read hands its entry to a bounded buffer and returns; a background writer
// inserts entries in batches. An entry that cannot be buffered (the writer
// is behind or PostgreSQL is down for long) is dropped and counted: the
// counter is the alert, and the buffer is sized so that it stays at zero.
package audit

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/biobridge/bridge/services/persistence/internal/metrics"
	"github.com/biobridge/bridge/services/persistence/internal/store"
)

// Sink stores a batch of entries.
type Sink interface {
	InsertAudit(ctx context.Context, entries []store.AuditEntry) error
}

// The writer's defaults, for the zero fields of a Config (the service's
// configuration reads its own variables' defaults from here).
const (
	DefaultBuffer        = 10_000
	DefaultBatch         = 500
	DefaultFlushInterval = 200 * time.Millisecond
	DefaultRetries       = 5
)

// Config tunes the writer; a zero field takes its Default.
type Config struct {
	// Buffer is how many entries may wait.
	Buffer int
	// Batch is the most entries per insert.
	Batch int
	// FlushInterval is the longest an entry waits before its batch is
	// written.
	FlushInterval time.Duration
	// Retries is how often a failed batch is retried at shutdown before it
	// is dropped (with growing pauses); while the service runs a batch is
	// retried until it is written.
	Retries int
}

// Writer is the batching audit writer.
type Writer struct {
	cfg    Config
	sink   Sink
	m      *metrics.Metrics
	logger *slog.Logger

	ch chan store.AuditEntry
	// full wakes the writer when a batch's worth of entries is queued;
	// otherwise it drains the buffer at its interval. (Receiving each entry
	// as it comes woke the writer's goroutine on every read.)
	full     chan struct{}
	stop     chan struct{}
	mu       sync.RWMutex
	closed   bool
	done     chan struct{}
	flushReq chan chan struct{}
}

// New returns a writer; Run must be running.
func New(sink Sink, cfg Config, m *metrics.Metrics, logger *slog.Logger) *Writer {
	if cfg.Buffer <= 0 {
		cfg.Buffer = DefaultBuffer
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.Retries <= 0 {
		cfg.Retries = DefaultRetries
	}
	return &Writer{
		cfg: cfg, sink: sink, m: m, logger: logger,
		ch:       make(chan store.AuditEntry, cfg.Buffer),
		full:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		flushReq: make(chan chan struct{}),
	}
}

// ErrFull is returned by Record when the buffer cannot take the entry.
var ErrFull = errors.New("audit buffer full")

// ErrClosed is returned by Record after shutdown began.
var ErrClosed = errors.New("audit writer closed")

// Record queues an entry without blocking. It fails (and counts the entry as
// dropped) when the buffer is full or the writer closed; callers then refuse
// the read they were about to serve.
func (w *Writer) Record(e store.AuditEntry) error {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		w.m.AuditDropped.Inc()
		w.logger.Error("audit entry after shutdown refused", "method", e.Method, "caller", e.Caller)
		return ErrClosed
	}
	select {
	case w.ch <- e:
		if len(w.ch) >= w.cfg.Batch {
			select {
			case w.full <- struct{}{}:
			default:
			}
		}
		return nil
	default:
		w.m.AuditDropped.Inc()
		w.logger.Error("audit buffer full, read refused", "method", e.Method, "caller", e.Caller)
		return ErrFull
	}
}

// Flush waits until every entry recorded before the call is written (or
// dropped). Tests and shutdown use it.
func (w *Writer) Flush(ctx context.Context) {
	ack := make(chan struct{})
	select {
	case w.flushReq <- ack:
	case <-w.done:
		return
	case <-ctx.Done():
		return
	}
	select {
	case <-ack:
	case <-w.done:
	case <-ctx.Done():
	}
}

// Run writes batches until Close; it then writes what is left and returns.
func (w *Writer) Run() {
	defer close(w.done)
	batch := make([]store.AuditEntry, 0, w.cfg.Batch)
	timer := time.NewTimer(w.cfg.FlushInterval)
	defer timer.Stop()
	for {
		select {
		case <-w.full:
			w.drain(batch)
		case <-timer.C:
			w.drain(batch)
			timer.Reset(w.cfg.FlushInterval)
		case ack := <-w.flushReq:
			// Everything recorded before the request is in the channel.
			w.drain(batch)
			close(ack)
		case <-w.stop:
			for open := true; open; {
				open = w.drain(batch)
			}
			return
		}
	}
}

// drain writes the queued entries, in batches of at most Batch, until the
// buffer is empty; it returns false once the buffer is closed and empty.
func (w *Writer) drain(batch []store.AuditEntry) (open bool) {
	batch = batch[:0]
	for {
		select {
		case e, ok := <-w.ch:
			if !ok {
				if len(batch) > 0 {
					w.write(batch)
				}
				return false
			}
			batch = append(batch, e)
			if len(batch) >= w.cfg.Batch {
				w.write(batch)
				batch = batch[:0]
			}
		default:
			if len(batch) > 0 {
				w.write(batch)
			}
			return true
		}
	}
}

// Close stops accepting entries, writes the buffered ones and waits for the
// writer (bounded by ctx).
func (w *Writer) Close(ctx context.Context) {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.ch)
		close(w.stop)
	}
	w.mu.Unlock()
	select {
	case <-w.done:
	case <-ctx.Done():
		w.logger.Error("audit writer did not finish before the shutdown deadline", "buffered", len(w.ch))
	}
}

func (w *Writer) isClosed() bool {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.closed
}

// write inserts a batch, retrying with backoff; it never gives up on the
// first failure because an audit record is a compliance record.
func (w *Writer) write(batch []store.AuditEntry) {
	backoff := 50 * time.Millisecond
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := w.sink.InsertAudit(ctx, batch)
		cancel()
		if err == nil {
			w.m.AuditWritten.Add(float64(len(batch)))
			return
		}
		w.m.AuditErrors.Inc()
		// While the service runs a batch is retried until it is written:
		// the reads it records were already served. New reads fail closed
		// once the buffer fills. Only at shutdown does a batch give up.
		if attempt >= w.cfg.Retries && w.isClosed() {
			w.m.AuditDropped.Add(float64(len(batch)))
			w.logger.Error("audit batch dropped after retries", "entries", len(batch), "err", err)
			return
		}
		w.logger.Warn("audit batch insert failed, retrying", "entries", len(batch), "err", err)
		time.Sleep(backoff)
		backoff = min(backoff*2, 2*time.Second)
	}
}
