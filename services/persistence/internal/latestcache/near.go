package latestcache

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Near is a per-replica near-cache of the latest hashes: Redis
// server-assisted client-side caching (RESP3 CLIENT TRACKING) through
// rueidis. A hash read through it is kept in this process and Redis
// pushes an invalidation on the same connection when the key changes
// (update, fill, erasure, expiry, eviction, FLUSHALL); rueidis drops the
// entry when the push arrives, and drops every entry when the connection
// closes (it may have missed pushes while down). The near-cache holds
// exactly what Redis held when it was read, so everything the Redis cache
// guarantees (complete snapshots only, values that never regress) holds
// through it.
//
// Invalidation is asynchronous: Redis queues the push when the key changes
// and this process applies it when its connection reads it. What the
// near-cache adds to that is a barrier: a PING on the same connection.
// Redis answers in order on a connection, so once the PING's reply is read,
// every invalidation Redis queued before it ran has been applied. From that
// follow the guarantees (docs/configuration.md states them for operators):
//
//   - on the replica that wrote: a write or erasure is acknowledged only
//     after its users are marked here and a barrier started after the
//     Redis update completed (or, if the barrier fails, the marks stay and
//     those users are read from Redis until one succeeds), so a GetLatest
//     that starts after the acknowledgment never sees the old values;
//   - on every other replica, with maxStale 0 (strict, the default): a
//     read is served only after a barrier that started after the read
//     did, so it sees every write acknowledged before it started, as a
//     read of Redis itself would. Concurrent reads share barriers (one
//     PING in flight; the reads that arrive meanwhile share the next), so
//     a burst of reads costs Redis a PING or two instead of a HGETALL
//     each;
//   - on every other replica, with maxStale > 0: a background barrier runs
//     every maxStale/4, and entries are served only while the last
//     completed barrier started less than maxStale ago. A write
//     acknowledged at time w is therefore seen by every GetLatest that
//     starts after w+maxStale; in practice the push arrives within a
//     network round trip;
//   - values never go back on a replica: a read that bypassed the
//     near-cache marks its key (see mark).
type Near struct {
	opt      rueidis.ClientOption
	ttl      time.Duration
	maxStale time.Duration // 0: strict
	onFlush  func()

	// fmu guards the shared barriers of strict reads: flying is the PING
	// in flight, next the one the reads that arrived after it was sent
	// wait for (sent when flying completes).
	fmu    sync.Mutex
	flying *flight
	next   *flight
	// pings counts the barriers sent (tests).
	pings atomic.Int64
	// failed is set when a shared barrier of strict reads failed and no
	// barrier has succeeded since: strict reads go around the near-cache
	// at once instead of each waiting for a barrier of its own (Run's
	// background barrier clears it when Redis answers again).
	failed atomic.Bool

	client atomic.Pointer[rueidis.Client]
	// clock is the time since base (monotonic), replaceable by tests.
	clock func() time.Duration
	// barrier is the start (clock) of the latest barrier that completed.
	barrier atomic.Int64
	// required: entries are served only when barrier > required (set
	// when the marks below overflow).
	required atomic.Int64

	mu sync.Mutex
	// marks maps keys written by this replica, or just read from Redis
	// around the near-cache, to the clock at the mark; they are read from
	// Redis until a barrier started after the mark completes.
	marks  map[string]time.Duration
	nmarks atomic.Int32
	closed bool
}

// flight is a barrier shared by strict reads.
type flight struct {
	// start is the clock before the PING is sent: every read that waits
	// for this flight started at or before it.
	start time.Duration
	done  chan struct{}
	err   error
}

// strictInterval is how often Run checks the connection in strict mode
// (reads run their own barriers; this one only reconnects).
const strictInterval = 250 * time.Millisecond

// barrierTimeout bounds a shared barrier of strict reads: the read
// timeout persistence gives its Redis client, so a stalled Redis costs a
// read no more through the near-cache than around it.
const barrierTimeout = 500 * time.Millisecond

// maxRetryWait is the longest wait between tries while Redis is down.
const maxRetryWait = 2 * time.Second

// maxMarks bounds the keys marked while their barrier is pending; past it
// the whole near-cache waits for the next barrier instead.
const maxMarks = 10_000

// NearConfig configures a Near.
type NearConfig struct {
	// RedisURL is the redis:// or rediss:// URL (its database is used).
	RedisURL string
	// MaxBytes caps the memory of the cached replies (rueidis's LRU).
	MaxBytes int
	// TTL caps how long an entry is kept (the key's own TTL in Redis caps
	// it too).
	TTL time.Duration
	// MaxStale bounds how old an entry's last confirmed invalidation may
	// be; barriers run every MaxStale/4. 0 is strict: every read waits for
	// a barrier that started after it (shared with concurrent reads).
	MaxStale time.Duration
	// OnFlush is called when the connection closes or Redis flushes
	// (metrics); it may be nil.
	OnFlush func()
}

// NewNear returns a near-cache; it connects in Run (Redis may be down at
// start), and serves nothing until its first barrier completed.
func NewNear(cfg NearConfig) (*Near, error) {
	opt, err := rueidis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, err
	}
	if cfg.MaxStale < 0 || cfg.TTL <= 0 || cfg.MaxBytes <= 0 {
		return nil, errors.New("latestcache: near-cache needs TTL and MaxBytes, and MaxStale not negative")
	}
	n := &Near{ttl: cfg.TTL, maxStale: cfg.MaxStale, onFlush: cfg.OnFlush, marks: map[string]time.Duration{}}
	base := time.Now()
	n.clock = func() time.Duration { return time.Since(base) }
	// One connection: the barrier must run on the connection that carries
	// the cached reads and their invalidations (rueidis keeps a cache per
	// connection). It pipelines concurrent reads by itself.
	opt.PipelineMultiplex = -1
	opt.CacheSizeEachConn = cfg.MaxBytes
	opt.Dialer = net.Dialer{Timeout: 500 * time.Millisecond, KeepAlive: opt.Dialer.KeepAlive}
	// A connection that stops answering is closed (and the cache with it)
	// by rueidis's background PING after this long.
	opt.ConnWriteTimeout = max(cfg.MaxStale, time.Second)
	opt.ClientName = "biobridge-persistence-near"
	// Set so that the connection reads pushes even when no command is
	// waiting (rueidis starts its reader for it), and to count flushes:
	// nil means every entry is dropped (connection closed or FLUSHALL).
	opt.OnInvalidations = func(keys []rueidis.RedisMessage) {
		if keys == nil && n.onFlush != nil {
			n.onFlush()
		}
	}
	n.opt = opt
	// The first barrier must be a real one.
	n.barrier.Store(-1)
	return n, nil
}

// Run connects (retrying while Redis is down) and runs the background
// barriers until ctx ends, then closes the connection.
func (n *Near) Run(ctx context.Context) {
	interval := n.maxStale / 4
	if n.maxStale == 0 {
		interval = strictInterval
	}
	t := time.NewTicker(max(interval, time.Millisecond))
	defer t.Stop()
	defer n.Close()
	// While Redis is unreachable, each try (a dial, when the connection
	// is down) waits longer, up to maxRetryWait: replicas must not hammer
	// a Redis that is coming back. Reads go around the near-cache then.
	var wait time.Duration
	var next time.Time
	for {
		if now := time.Now(); !now.Before(next) {
			err := n.Connect()
			if err == nil {
				bctx, cancel := context.WithTimeout(ctx, max(n.maxStale, time.Second))
				err = n.Barrier(bctx)
				cancel()
			}
			if err != nil {
				wait = min(max(2*wait, interval), maxRetryWait)
				next = now.Add(wait)
			} else {
				wait = 0
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Connect opens the near-cache's connection unless it is open (Run does;
// tests that drive the barriers themselves call it).
func (n *Near) Connect() error {
	if n.client.Load() != nil {
		return nil
	}
	c, err := rueidis.NewClient(n.opt)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		c.Close()
		return errors.New("latestcache: near-cache closed")
	}
	n.client.Store(&c)
	return nil
}

// Close closes the connection; the near-cache serves nothing afterwards.
func (n *Near) Close() {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	if c := n.client.Swap(nil); c != nil {
		(*c).Close()
	}
}

// Barrier sends a PING on the near-cache's connection and waits for it:
// afterwards every invalidation Redis queued before the PING ran has been
// applied. Marks older than the barrier's start are cleared.
func (n *Near) Barrier(ctx context.Context) error {
	return n.barrierFrom(ctx, n.clock())
}

// barrierFrom runs a barrier whose start is start (taken before the call).
func (n *Near) barrierFrom(ctx context.Context, start time.Duration) error {
	c := n.client.Load()
	if c == nil {
		return errors.New("latestcache: near-cache not connected")
	}
	n.pings.Add(1)
	if err := (*c).Do(ctx, (*c).B().Ping().Build()).Error(); err != nil {
		return err
	}
	n.failed.Store(false)
	for {
		old := n.barrier.Load()
		if int64(start) <= old || n.barrier.CompareAndSwap(old, int64(start)) {
			break
		}
	}
	if n.nmarks.Load() > 0 {
		n.mu.Lock()
		for k, at := range n.marks {
			if at < start {
				delete(n.marks, k)
			}
		}
		n.nmarks.Store(int32(len(n.marks)))
		n.mu.Unlock()
	}
	return nil
}

// fresh waits for a barrier that starts after the call: every
// invalidation Redis queued before the call is then applied. Concurrent
// callers share barriers: one PING is in flight at a time, the callers
// that arrive while it is share the next one, sent as soon as it is
// answered.
func (n *Near) fresh(ctx context.Context) error {
	at := n.clock()
	n.fmu.Lock()
	var f *flight
	switch {
	case n.flying == nil:
		// Nothing in flight: send the PING from this goroutine (no
		// hand-off when reads do not overlap); a flight the reads that
		// arrive meanwhile need goes on in a goroutine of its own.
		f = &flight{start: n.clock(), done: make(chan struct{})}
		n.flying = f
		n.fmu.Unlock()
		if next := n.land(f); next != nil {
			go n.fly(next)
		}
		return f.err
	case n.flying.start >= at:
		f = n.flying
	default:
		if n.next == nil {
			n.next = &flight{done: make(chan struct{})}
		}
		f = n.next
	}
	n.fmu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fly runs f's barrier, then the next flight's while callers wait for one.
func (n *Near) fly(f *flight) {
	for f != nil {
		f = n.land(f)
	}
}

// land runs f's barrier and releases its callers; it returns the next
// flight (now the one in flight, to be run by the caller) when callers
// wait for one.
func (n *Near) land(f *flight) *flight {
	ctx, cancel := context.WithTimeout(context.Background(), barrierTimeout)
	f.err = n.barrierFrom(ctx, f.start)
	cancel()
	if f.err != nil {
		n.failed.Store(true)
	}
	close(f.done)
	n.fmu.Lock()
	defer n.fmu.Unlock()
	next := n.next
	n.next = nil
	if next != nil {
		// Later than every waiting caller's call.
		next.start = n.clock()
	}
	n.flying = next
	return next
}

// Sync makes this replica's later reads of keys see what Redis holds now:
// it marks them (they are read from Redis, not from the near-cache) and
// runs a barrier, which clears the marks once the invalidations of the
// changes made so far are applied. A failed barrier leaves the marks until
// a later one succeeds.
//
// In strict mode it does nothing: every read runs a barrier that starts
// after it, which covers what the caller wrote before the read.
func (n *Near) Sync(ctx context.Context, keys []string) error {
	if n.maxStale == 0 || n.client.Load() == nil {
		// Not connected: nothing cached (entries die with their
		// connection), and a new connection starts empty.
		return nil
	}
	n.mark(keys...)
	return n.Barrier(ctx)
}

// mark keeps keys out of the near-cache until a barrier that starts after
// now completes. Sync marks what this replica wrote; a read that went to
// Redis without the near-cache marks its key once answered, because it
// may have seen a write whose invalidation is still on its way, and the
// near-cache's older entry must not be served after it (reads never go
// back in time on a replica).
func (n *Near) mark(keys ...string) {
	at := n.clock()
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.marks)+len(keys) > maxMarks {
		for {
			old := n.required.Load()
			if int64(at) <= old || n.required.CompareAndSwap(old, int64(at)) {
				break
			}
		}
		return
	}
	for _, k := range keys {
		n.marks[k] = at
	}
	n.nmarks.Store(int32(len(n.marks)))
}

// usable reports whether key may be served from the near-cache now.
func (n *Near) usable(key string) bool {
	b := n.barrier.Load()
	if b < 0 || b <= n.required.Load() || (n.maxStale > 0 && int64(n.clock())-b > int64(n.maxStale)) {
		return false
	}
	if n.nmarks.Load() == 0 {
		return true
	}
	n.mu.Lock()
	at, marked := n.marks[key]
	n.mu.Unlock()
	return !marked || int64(at) < b
}

// errNearUnusable means the caller reads Redis another way.
var errNearUnusable = errors.New("latestcache: near-cache not usable now")

// hgetall returns HGETALL key from the near-cache, or reads it through the
// near-cache's connection and keeps it; errNearUnusable when the key must
// be read from Redis without the near-cache.
func (n *Near) hgetall(ctx context.Context, key string) (h map[string]string, hit bool, err error) {
	c := n.client.Load()
	if c == nil {
		return nil, false, errNearUnusable
	}
	if n.maxStale == 0 {
		if n.failed.Load() {
			return nil, false, errNearUnusable
		}
		if err := n.fresh(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, false, ctx.Err()
			}
			return nil, false, errNearUnusable
		}
	}
	if !n.usable(key) {
		return nil, false, errNearUnusable
	}
	res := (*c).DoCache(ctx, (*c).B().Hgetall().Key(key).Cache(), n.ttl)
	h, err = res.AsStrMap()
	return h, res.IsCacheHit(), err
}
