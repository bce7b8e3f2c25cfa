package latestcache

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Reads of concurrent callers share Redis round trips: a caller queues its
// HGETALL, and up to maxReaders readers each send whatever is queued as one
// pipeline (up to maxBatch commands), so under load a round trip, a pooled
// connection's liveness check and the socket syscalls serve several reads.
// There is no waiting window: a lone read goes out at once. A caller that
// finds a reader's slot free is that reader for one batch, on its own
// goroutine (its read is in the batch unless more than maxBatch were queued
// before it), so a read that finds no other waiting costs no goroutine and
// no hand-off; what is queued after its batch goes on in a goroutine, so
// no caller's answer waits for later callers' reads. Readers exist only
// while reads are queued.
const (
	maxReaders = 4
	maxBatch   = 64
)

type hgetResult struct {
	h   map[string]string
	err error
}

type hgetReq struct {
	ctx  context.Context
	key  string
	done chan hgetResult
}

type reads struct {
	rdb     redis.UniversalClient
	mu      sync.Mutex
	queue   []*hgetReq
	readers int
}

// hgetall returns HGETALL key, sent in a pipeline with other callers'.
// A caller that sends a batch itself waits for its round trip even when
// its context ends meanwhile (the Redis client's timeouts bound it).
func (r *reads) hgetall(ctx context.Context, key string) (map[string]string, error) {
	req := &hgetReq{ctx: ctx, key: key, done: make(chan hgetResult, 1)}
	r.mu.Lock()
	r.queue = append(r.queue, req)
	lead := r.readers < maxReaders
	if lead {
		r.readers++
	}
	r.mu.Unlock()
	if lead {
		if batch := r.next(); batch != nil {
			r.send(batch)
			r.handOff()
		}
	}
	select {
	case res := <-req.done:
		return res.h, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// next takes up to maxBatch queued reads; when none are queued it gives
// up the caller's reader slot and returns nil.
func (r *reads) next() []*hgetReq {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := min(len(r.queue), maxBatch)
	if n == 0 {
		r.readers--
		return nil
	}
	batch := make([]*hgetReq, n)
	copy(batch, r.queue)
	r.queue = r.queue[:copy(r.queue, r.queue[n:])]
	return batch
}

// handOff passes a caller's reader slot to a goroutine when reads are
// still queued, and gives it up otherwise.
func (r *reads) handOff() {
	r.mu.Lock()
	more := len(r.queue) > 0
	if !more {
		r.readers--
	}
	r.mu.Unlock()
	if more {
		go r.read()
	}
}

// read sends queued reads until the queue is empty.
func (r *reads) read() {
	for batch := r.next(); batch != nil; batch = r.next() {
		r.send(batch)
	}
}

func (r *reads) send(batch []*hgetReq) {
	// Callers that gave up are not read for.
	live := batch[:0]
	for _, q := range batch {
		if q.ctx.Err() == nil {
			live = append(live, q)
		}
	}
	if len(live) == 0 {
		return
	}
	// The first caller's context carries the trace; no caller's
	// cancellation may fail the others' reads (the client's timeouts bound
	// the round trip).
	ctx := context.WithoutCancel(live[0].ctx)
	if len(live) == 1 {
		h, err := r.rdb.HGetAll(ctx, live[0].key).Result()
		live[0].done <- hgetResult{h, err}
		return
	}
	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(live))
	for i, q := range live {
		cmds[i] = pipe.HGetAll(ctx, q.key)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	for i, q := range live {
		h, err := cmds[i].Result()
		q.done <- hgetResult{h, err}
	}
}
