// Package latestcache keeps every user's latest values in one Redis hash
// ({prefix}bb:{u:<user>}:latest, a field per metric; the hash tag keeps a
// user's keys on one Redis Cluster slot) and publishes changes on a sharded
// pub/sub channel for WatchLatest.
//
// Correctness does not depend on Redis: PostgreSQL's latest table is the
// truth, computed inside the write transaction. The cache is a copy kept in
// commit order. Each write transaction bumps the user's commit counter
// (user_commits.seq) under the user's lock; its cache update carries the
// new counter and the previous one, and a Lua script applies it only if
// the hash is a complete snapshot at exactly the previous counter. An
// update that arrives late is ignored (the hash already reflects it); one
// that finds a gap (a lost update, updates racing out of order, a missing
// hash) drops the hash's values and keeps only the counter, so no older
// snapshot can be installed afterwards and the next read rebuilds it from
// PostgreSQL. Values therefore never regress, including when a deletion
// restores an older value, which a compare-and-set on observed_at alone
// cannot express.
package latestcache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/services/persistence/internal/record"
)

// Hash fields that are not metrics start with "_" (metric names never do).
const (
	fieldSeq      = "_seq"
	fieldComplete = "_ok"
)

// updateScript applies one commit's changes.
// KEYS[1] hash; ARGV[1] seq, ARGV[2] prev, ARGV[3] ttl seconds, then
// metric/value pairs (an empty value removes the metric).
// Returns 0 (already reflected), 1 (applied) or 2 (invalidated).
var updateScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], '_seq')
local seq = tonumber(ARGV[1])
if cur and seq <= tonumber(cur) then
  return 0
end
if cur and tonumber(cur) == tonumber(ARGV[2]) and redis.call('HGET', KEYS[1], '_ok') == '1' then
  for i = 4, #ARGV, 2 do
    if ARGV[i+1] == '' then
      redis.call('HDEL', KEYS[1], ARGV[i])
    else
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1])
    end
  end
  redis.call('HSET', KEYS[1], '_seq', ARGV[1])
  return 1
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_seq', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 2
`)

// fillScript installs a complete snapshot read from PostgreSQL at commit
// counter ARGV[1], unless the hash already reflects a later commit.
// KEYS[1] hash; ARGV[1] seq, ARGV[2] ttl seconds, then metric/value pairs.
// Returns 1 when installed, 0 when skipped.
var fillScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], '_seq')
if cur and tonumber(cur) > tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1])
end
redis.call('HSET', KEYS[1], '_seq', ARGV[1], '_ok', '1')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
`)

// Cache is the Redis latest-value cache.
type Cache struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
	reads  *reads
	// near is the per-replica near-cache of the hashes (nil: off).
	near *Near
	// nearRead observes each near-cache read's result (hit, miss, bypass).
	nearRead func(result string)
}

// New returns a cache on rdb with keys under prefix. Snapshots expire after
// ttl (not refreshed by updates), which bounds the life of any entry that
// missed a repair, e.g. after a crash during a Redis outage.
func New(rdb redis.UniversalClient, prefix string, ttl time.Duration) *Cache {
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	return &Cache{rdb: rdb, prefix: prefix, ttl: ttl, reads: &reads{rdb: rdb}}
}

// WithNear reads the hashes through the near-cache n; observe (may be nil)
// is called with each read's result: hit, miss or bypass.
func (c *Cache) WithNear(n *Near, observe func(result string)) *Cache {
	c.near = n
	c.nearRead = observe
	return c
}

// Near returns the near-cache (nil when off).
func (c *Cache) Near() *Near { return c.near }

// hgetall reads the user's hash: from the near-cache when it may serve it,
// else from Redis through the shared pipelines.
func (c *Cache) hgetall(ctx context.Context, key string) (map[string]string, error) {
	if c.near == nil {
		return c.reads.hgetall(ctx, key)
	}
	h, hit, err := c.near.hgetall(ctx, key)
	switch {
	case err == nil:
		if c.nearRead != nil {
			if hit {
				c.nearRead("hit")
			} else {
				c.nearRead("miss")
			}
		}
		return h, nil
	case !errors.Is(err, errNearUnusable) && ctx.Err() != nil:
		return nil, err
	}
	// Not usable now, or its connection failed: Redis without it.
	if c.nearRead != nil {
		c.nearRead("bypass")
	}
	h, err = c.reads.hgetall(ctx, key)
	if err == nil {
		c.near.mark(key)
	}
	return h, err
}

// HashKey is the user's hash.
func (c *Cache) HashKey(user string) string { return c.prefix + "bb:{u:" + user + "}:latest" }

// Channel is the user's change channel (same hash tag, same shard).
func (c *Cache) Channel(user string) string { return c.prefix + "bb:{u:" + user + "}:latest:changes" }

// Load loads the scripts (also done lazily on NOSCRIPT).
func (c *Cache) Load(ctx context.Context) error {
	if err := updateScript.Load(ctx, c.rdb).Err(); err != nil {
		return err
	}
	return fillScript.Load(ctx, c.rdb).Err()
}

// entry is the cached (and published) form of a latest value.
type entry struct {
	M  string  `json:"m,omitempty"`
	V  float64 `json:"v"`
	T  int64   `json:"t"`
	ST int64   `json:"st,omitempty"`
	S  int32   `json:"s"`
	R  string  `json:"r"`
	Q  int32   `json:"q"`
	DN string  `json:"dn,omitempty"`
	DM string  `json:"dm,omitempty"`
	DB string  `json:"db,omitempty"`
}

func toEntry(l record.Latest) entry {
	e := entry{V: l.Value, T: l.ObservedAt.UnixMicro(), S: int32(l.Source), R: l.VendorRecordID, Q: l.Seq,
		DN: l.Device.Name, DM: l.Device.Model, DB: l.Device.BundleID}
	if !l.StartTime.IsZero() {
		e.ST = l.StartTime.UnixMicro()
	}
	return e
}

func (e entry) latest(metric string) record.Latest {
	l := record.Latest{Metric: metric, Value: e.V, ObservedAt: time.UnixMicro(e.T).UTC(),
		Source: biometricsv1.Source(e.S), VendorRecordID: e.R, Seq: e.Q,
		Device: record.Device{Name: e.DN, Model: e.DM, BundleID: e.DB}}
	if e.ST != 0 {
		l.StartTime = time.UnixMicro(e.ST).UTC()
	}
	return l
}

func encode(l record.Latest) (string, error) {
	b, err := json.Marshal(toEntry(l))
	return string(b), err
}

// Message is what the change channel carries: one commit's changes.
type Message struct {
	Seq     int64    `json:"seq"`
	Set     []entry  `json:"set,omitempty"`
	Removed []string `json:"removed,omitempty"`
}

// Change is one metric's change decoded from a Message.
type Change struct {
	Metric string
	// Value is nil when the metric was removed.
	Value *record.Latest
}

// Decode parses a change message: the commit counter and the changes.
func Decode(payload string) (int64, []Change, error) {
	var m Message
	if err := json.Unmarshal([]byte(payload), &m); err != nil {
		return 0, nil, fmt.Errorf("decode latest change: %w", err)
	}
	out := make([]Change, 0, len(m.Set)+len(m.Removed))
	for _, e := range m.Set {
		l := e.latest(e.M)
		out = append(out, Change{Metric: e.M, Value: &l})
	}
	for _, r := range m.Removed {
		out = append(out, Change{Metric: r})
	}
	return m.Seq, out, nil
}

// ApplyResult summarizes Apply.
type ApplyResult struct {
	// Failed lists users whose update may not have reached Redis.
	Failed []string
	// Invalidated counts hashes dropped because of a gap.
	Invalidated int
}

// Apply writes committed changes to the cache and publishes them, in one
// pipeline. It returns the users whose update failed, so the caller can
// repair them; the error is the first failure.
func (c *Cache) Apply(ctx context.Context, changes []record.UserChange) (ApplyResult, error) {
	if len(changes) == 0 {
		return ApplyResult{}, nil
	}
	res, err := c.apply(ctx, changes)
	if err != nil && isNoScript(err) {
		if lerr := c.Load(ctx); lerr == nil {
			res, err = c.apply(ctx, changes)
		}
	}
	return res, err
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

func (c *Cache) apply(ctx context.Context, changes []record.UserChange) (ApplyResult, error) {
	pipe := c.rdb.Pipeline()
	type pending struct {
		user string
		cmd  *redis.Cmd
		pub  *redis.IntCmd
	}
	cmds := make([]pending, 0, len(changes))
	ttl := strconv.Itoa(int(c.ttl.Seconds()))
	for _, ch := range changes {
		args := make([]any, 0, 3+2*(len(ch.Set)+len(ch.Removed)))
		args = append(args, ch.Seq, ch.Prev, ttl)
		msg := Message{Seq: ch.Seq, Removed: ch.Removed}
		for _, l := range ch.Set {
			v, err := encode(l)
			if err != nil {
				return ApplyResult{}, err
			}
			args = append(args, l.Metric, v)
			e := toEntry(l)
			e.M = l.Metric
			msg.Set = append(msg.Set, e)
		}
		for _, m := range ch.Removed {
			args = append(args, m, "")
		}
		p := pending{user: ch.UserID, cmd: updateScript.EvalSha(ctx, pipe, []string{c.HashKey(ch.UserID)}, args...)}
		// Published even without changes: watchers follow the commit
		// counter and treat a gap as a reason to re-read.
		b, err := json.Marshal(msg)
		if err != nil {
			return ApplyResult{}, err
		}
		p.pub = pipe.SPublish(ctx, c.Channel(ch.UserID), b)
		cmds = append(cmds, p)
	}
	_, execErr := pipe.Exec(ctx)
	var res ApplyResult
	var firstErr error
	for _, p := range cmds {
		n, err := p.cmd.Int()
		if err != nil {
			res.Failed = append(res.Failed, p.user)
			if firstErr == nil || isNoScript(err) {
				firstErr = err
			}
			continue
		}
		if n == 2 {
			res.Invalidated++
		}
	}
	if firstErr == nil && execErr != nil && !errors.Is(execErr, redis.Nil) {
		// Publishing failed; values are in place, watchers resync.
		firstErr = execErr
	}
	return res, firstErr
}

// Get returns the user's cached values (by metric) and the commit counter
// they reflect. Concurrent Gets share pipelined round trips to Redis. ok is false when the hash is not a complete snapshot: then
// the caller reads PostgreSQL.
func (c *Cache) Get(ctx context.Context, user string) (values map[string]record.Latest, seq int64, ok bool, err error) {
	h, err := c.hgetall(ctx, c.HashKey(user))
	if err != nil {
		return nil, 0, false, err
	}
	if h[fieldComplete] != "1" {
		return nil, 0, false, nil
	}
	seq, err = strconv.ParseInt(h[fieldSeq], 10, 64)
	if err != nil {
		return nil, 0, false, nil
	}
	values = make(map[string]record.Latest, len(h))
	for k, v := range h {
		if strings.HasPrefix(k, "_") {
			continue
		}
		e, err := decodeEntry(v)
		if err != nil {
			// A corrupt field: treat the whole hash as a miss, the fill
			// replaces it.
			return nil, 0, false, nil
		}
		values[k] = e.latest(k)
	}
	return values, seq, true, nil
}

// Fill installs a snapshot of user's values read at commit counter seq.
func (c *Cache) Fill(ctx context.Context, user string, seq int64, values []record.Latest) (installed bool, err error) {
	args := make([]any, 0, 2+2*len(values))
	args = append(args, seq, strconv.Itoa(int(c.ttl.Seconds())))
	for _, l := range values {
		v, err := encode(l)
		if err != nil {
			return false, err
		}
		args = append(args, l.Metric, v)
	}
	n, err := fillScript.Run(ctx, c.rdb, []string{c.HashKey(user)}, args...).Int()
	if err != nil {
		return false, err
	}
	return n == 1, nil
}

// Subscribe opens a subscription to the user's change channel and waits
// until Redis confirmed it, so no change published afterwards is missed.
func (c *Cache) Subscribe(ctx context.Context, user string) (*redis.PubSub, error) {
	ps := c.rdb.SSubscribe(ctx, c.Channel(user))
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		return nil, err
	}
	return ps, nil
}

// Forget deletes the user's cached values (erasure).
func (c *Cache) Forget(ctx context.Context, user string) error {
	return c.rdb.Del(ctx, c.HashKey(user)).Err()
}

// Ping checks Redis.
func (c *Cache) Ping(ctx context.Context) error { return c.rdb.Ping(ctx).Err() }
