package latestcache

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/services/persistence/internal/metrics"
	"github.com/biobridge/bridge/services/persistence/internal/record"
)

// maxRepairs bounds the set of users waiting for a cache repair. Past it,
// users are not tracked (counted); their entries still expire by TTL and a
// later write's gap detection invalidates them.
const maxRepairs = 100_000

// Snapshots reads a user's latest values from PostgreSQL, the truth the
// cache copies (the persistence store).
type Snapshots interface {
	// LatestSnapshot returns the user's commit counter and latest values
	// as of that commit.
	LatestSnapshot(ctx context.Context, user string) (int64, []record.Latest, error)
}

// Latest serves latest values: Redis first, PostgreSQL on a miss or a
// Redis error (then refilling the cache), and keeps the cache in step
// with commits. Redis trouble never fails a read or a write.
type Latest struct {
	store  Snapshots
	cache  *Cache // nil: no Redis, PostgreSQL only
	m      *metrics.Metrics
	logger *slog.Logger
	// hits counts cache hits: CacheReads{result="hit"}, looked up once
	// rather than on every read.
	hits prometheus.Counter

	mu sync.Mutex
	// repairs maps users to the generation of their latest repair mark;
	// a repair only clears the mark it started from, so a failure that
	// happens during a repair is not forgotten.
	repairs map[string]uint64
	gen     uint64
}

// NewLatest returns the latest-value service; cache may be nil.
func NewLatest(st Snapshots, cache *Cache, m *metrics.Metrics, logger *slog.Logger) *Latest {
	return &Latest{store: st, cache: cache, m: m, logger: logger, repairs: map[string]uint64{},
		hits: m.CacheReads.WithLabelValues("hit")}
}

// Cache returns the cache (nil without Redis).
func (l *Latest) Cache() *Cache { return l.cache }

// Get returns the user's latest values by metric and the commit counter
// they reflect.
func (l *Latest) Get(ctx context.Context, user string) (map[string]record.Latest, int64, error) {
	redisOK := l.cache != nil
	if l.cache != nil {
		vals, seq, ok, err := l.cache.Get(ctx, user)
		switch {
		case err != nil:
			redisOK = false
			l.m.CacheReads.WithLabelValues("error").Inc()
			l.m.CacheErrors.WithLabelValues("get").Inc()
			l.logger.WarnContext(ctx, "latest cache read failed, reading postgres", logging.UserID(user), "err", err)
		case ok:
			l.hits.Inc()
			return vals, seq, nil
		default:
			l.m.CacheReads.WithLabelValues("miss").Inc()
		}
	} else {
		l.m.CacheReads.WithLabelValues("miss").Inc()
	}
	seq, list, err := l.store.LatestSnapshot(ctx, user)
	if err != nil {
		return nil, 0, err
	}
	switch {
	case seq == 0 && len(list) == 0:
		// Nothing was ever committed for the user (or the user was
		// erased): nothing worth a cache entry, which would only be a
		// key about a user the bridge holds nothing of.
	case redisOK:
		l.fill(ctx, user, seq, list, "read_miss")
	case l.cache != nil:
		l.markForRepair(user)
	}
	vals := make(map[string]record.Latest, len(list))
	for _, v := range list {
		vals[v.Metric] = v
	}
	return vals, seq, nil
}

func (l *Latest) fill(ctx context.Context, user string, seq int64, list []record.Latest, trigger string) bool {
	installed, err := l.cache.Fill(ctx, user, seq, list)
	switch {
	case err != nil:
		l.m.CacheErrors.WithLabelValues("fill").Inc()
		l.m.CacheRepairs.WithLabelValues(trigger, "error").Inc()
		l.logger.WarnContext(ctx, "latest cache fill failed", logging.UserID(user), "err", err)
		return false
	case installed:
		l.m.CacheRepairs.WithLabelValues(trigger, "installed").Inc()
	default:
		// The cache already reflects a later commit.
		l.m.CacheRepairs.WithLabelValues(trigger, "superseded").Inc()
	}
	return true
}

// forgetAgainAfter is how long after an erasure the user's cache entry is
// deleted a second time: a read that loaded its snapshot just before the
// erasure committed may install it just after the first delete.
const forgetAgainAfter = 5 * time.Second

// Forget removes an erased user's cache entry, now and once more shortly
// after (see forgetAgainAfter). A failure is logged and counted; the entry
// then expires with LATEST_CACHE_TTL.
func (l *Latest) Forget(ctx context.Context, user string) {
	if l.cache == nil {
		return
	}
	forget := func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := l.cache.Forget(ctx, user); err != nil {
			l.m.CacheErrors.WithLabelValues("forget").Inc()
			l.logger.WarnContext(ctx, "latest cache delete after erasure failed", logging.UserID(user), "err", err)
		}
		l.syncNear(ctx, []record.UserChange{{UserID: user}})
	}
	forget(ctx)
	bg := context.WithoutCancel(ctx)
	time.AfterFunc(forgetAgainAfter, func() { forget(bg) })
}

// AfterCommit applies committed changes to the cache. Failures are logged,
// counted and queued for repair; they never fail the write.
func (l *Latest) AfterCommit(ctx context.Context, changes []record.UserChange) {
	if l.cache == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	res, err := l.cache.Apply(ctx, changes)
	l.syncNear(ctx, changes)
	if res.Invalidated > 0 {
		l.m.CacheInvalidated.Add(float64(res.Invalidated))
	}
	if err != nil {
		l.m.CacheErrors.WithLabelValues("update").Inc()
		l.logger.WarnContext(ctx, "latest cache update failed, queued for repair", "users", len(res.Failed), "err", err)
		for _, u := range res.Failed {
			l.markForRepair(u)
		}
	}
}

// nearSyncTimeout bounds how long a write waits for the near-cache's
// barrier; when it fails the users stay marked and are read from Redis
// until a later barrier completes, so a failure costs hits, not freshness.
const nearSyncTimeout = 500 * time.Millisecond

// syncNear makes this replica's near-cache drop the changed users' entries
// before the write is acknowledged (see Near.Sync).
func (l *Latest) syncNear(ctx context.Context, changes []record.UserChange) {
	n := l.cache.Near()
	if n == nil {
		return
	}
	keys := make([]string, len(changes))
	for i, ch := range changes {
		keys[i] = l.cache.HashKey(ch.UserID)
	}
	ctx, cancel := context.WithTimeout(ctx, nearSyncTimeout)
	defer cancel()
	if err := n.Sync(ctx, keys); err != nil {
		l.m.CacheErrors.WithLabelValues("near_sync").Inc()
		l.logger.DebugContext(ctx, "near-cache barrier failed, written users read from redis until the next one", "users", len(keys), "err", err)
	}
}

func (l *Latest) markForRepair(user string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.repairs) >= maxRepairs {
		l.m.CacheRepairs.WithLabelValues("after_error", "untracked").Inc()
		return
	}
	l.gen++
	l.repairs[user] = l.gen
}

// PendingRepairs returns how many users wait for a repair.
func (l *Latest) PendingRepairs() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.repairs)
}

// RunRepairs rebuilds queued users' cache entries from PostgreSQL until
// ctx ends, backing off while Redis stays down.
func (l *Latest) RunRepairs(ctx context.Context, interval time.Duration) {
	if l.cache == nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.mu.Lock()
		type mark struct {
			user string
			gen  uint64
		}
		batch := make([]mark, 0, 256)
		for u, g := range l.repairs {
			batch = append(batch, mark{u, g})
			if len(batch) == cap(batch) {
				break
			}
		}
		l.mu.Unlock()
		for _, mk := range batch {
			if ctx.Err() != nil {
				return
			}
			if !l.repair(ctx, mk.user, mk.gen) {
				break // Redis (or PostgreSQL) still down: try again next tick
			}
		}
	}
}

func (l *Latest) repair(ctx context.Context, user string, gen uint64) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	seq, list, err := l.store.LatestSnapshot(ctx, user)
	if err != nil {
		l.logger.WarnContext(ctx, "latest cache repair: read postgres", logging.UserID(user), "err", err)
		return false
	}
	if seq == 0 && len(list) == 0 {
		// Erased meanwhile (or never written): the entry must go, not be
		// rebuilt empty.
		if err := l.cache.Forget(ctx, user); err != nil {
			return false
		}
	} else if !l.fill(ctx, user, seq, list, "after_error") {
		return false
	}
	l.mu.Lock()
	if l.repairs[user] == gen {
		delete(l.repairs, user)
	}
	l.mu.Unlock()
	return true
}
