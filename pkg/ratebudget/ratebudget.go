// Package ratebudget is a vendor's app-wide request budget shared through
// Redis by every ingest replica and the token broker (whose own API calls,
// such as the user-id lookup on connect, count against the same limit). WHOOP limits the whole app (all users
// together) to 100 requests a minute and 10,000 a day; exceeding that gets
// 429s for everyone, so the replicas must agree on what has been spent.
//
// Each window is a sliding log (a sorted set of request times) updated by
// one Lua script with Redis's own clock, so replicas on machines with skewed
// clocks still agree. A sliding log guarantees at most Limit requests in any
// interval of the window's length, which is stricter than the vendor's fixed
// windows, whatever their phase. Each window is padded by a slack so that
// requests reserved in order but delayed differently on the way to the
// vendor still arrive within the limit.
//
// After a 429 the vendor names when to come back; Pause stops every replica
// until then.
//
// Background work (backfill, reconciliation) takes the budget with a share
// below one: it may fill each window only up to that fraction of its limit,
// so the rest stays free for live webhooks however much history is waiting.
package ratebudget

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The vendors' published limits, the defaults of WHOOP_RATE_LIMIT,
// WHOOP_RATE_WINDOW, WHOOP_DAILY_LIMIT, OURA_RATE_LIMIT and OURA_RATE_WINDOW.
const (
	DefaultWhoopLimit      = 100
	DefaultWhoopWindow     = time.Minute
	DefaultWhoopDailyLimit = 10000
	DefaultOuraLimit       = 5000
	DefaultOuraWindow      = 5 * time.Minute
)

// Window is one limit: at most Limit requests per Period.
type Window struct {
	Limit  int
	Period time.Duration
}

// DefaultSlack is the padding added to a window of period p.
func DefaultSlack(p time.Duration) time.Duration { return p/50 + 500*time.Millisecond }

// Budget is one vendor's budget.
type Budget struct {
	client  redis.UniversalClient
	keys    []string
	periods []int64 // microseconds, slack included
	limits  []int
	pause   string
}

// New returns the budget named vendor under the key prefix. Keys share one
// hash tag so the script runs on one Redis Cluster slot. A zero or negative
// slack uses DefaultSlack.
func New(client redis.UniversalClient, prefix, vendor string, windows []Window, slack time.Duration) *Budget {
	tag := prefix + "bb:{ratebudget:" + vendor + "}"
	b := &Budget{client: client, pause: tag + ":pause"}
	for _, w := range windows {
		if w.Limit <= 0 || w.Period <= 0 {
			continue
		}
		s := slack
		if s <= 0 {
			s = DefaultSlack(w.Period)
		}
		b.keys = append(b.keys, tag+":w"+strconv.FormatInt(w.Period.Milliseconds(), 10))
		b.periods = append(b.periods, (w.Period + s).Microseconds())
		b.limits = append(b.limits, w.Limit)
	}
	return b
}

// takeScript: KEYS[1] is the pause key, KEYS[2..] the windows; ARGV[1] a
// unique member, then (period_us, limit) per window. It returns 0 and
// records the request in every window, or the microseconds to wait.
var takeScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = redis.call('PTTL', KEYS[1])
if paused > 0 then
	return paused * 1000
end
local wait = 0
for i = 2, #KEYS do
	local period = tonumber(ARGV[(i - 2) * 2 + 2])
	local limit = tonumber(ARGV[(i - 2) * 2 + 3])
	redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - period)
	if redis.call('ZCARD', KEYS[i]) >= limit then
		-- The slot frees when the request that is limit-th from the newest
		-- leaves the window.
		local n = redis.call('ZCARD', KEYS[i])
		local oldest = redis.call('ZRANGE', KEYS[i], n - limit, n - limit, 'WITHSCORES')
		local w = tonumber(oldest[2]) + period - now + 1
		if w > wait then wait = w end
	end
end
if wait > 0 then
	return wait
end
for i = 2, #KEYS do
	local period = tonumber(ARGV[(i - 2) * 2 + 2])
	redis.call('ZADD', KEYS[i], now, ARGV[1])
	redis.call('PEXPIRE', KEYS[i], math.ceil(period / 1000) + 1000)
end
return 0
`)

// Take reserves one request. It returns 0 when the request may be sent
// now (and counts it), or how long to wait before asking again.
func (b *Budget) Take(ctx context.Context) (time.Duration, error) {
	return b.TakeShare(ctx, 1)
}

// TakeShare is Take for work that may use only share (0..1] of each
// window: it waits while the window holds share × limit requests or more
// (at least one request per window is always allowed).
func (b *Budget) TakeShare(ctx context.Context, share float64) (time.Duration, error) {
	if len(b.keys) == 0 {
		return 0, nil
	}
	if share <= 0 || share > 1 {
		share = 1
	}
	var member [12]byte
	_, _ = rand.Read(member[:])
	args := make([]any, 0, 1+2*len(b.keys))
	args = append(args, hex.EncodeToString(member[:]))
	for i := range b.keys {
		args = append(args, b.periods[i], max(1, int(float64(b.limits[i])*share)))
	}
	us, err := takeScript.Run(ctx, b.client, append([]string{b.pause}, b.keys...), args...).Int64()
	if err != nil {
		return 0, fmt.Errorf("take rate budget: %w", err)
	}
	return time.Duration(us) * time.Microsecond, nil
}

// ErrSpent: the budget would not free up before the caller's deadline.
var ErrSpent = errors.New("shared rate budget spent")

// Wait calls take (a Take or TakeShare) until it grants a request,
// sleeping for the waits it names. It gives up with ErrSpent, and the wait
// take asked for, when the next try would fall after deadline (zero: no
// deadline but ctx's). An error of take is returned as it is, and ctx's
// error when ctx ends first.
func Wait(ctx context.Context, deadline time.Time, take func(context.Context) (time.Duration, error)) (time.Duration, error) {
	for {
		wait, err := take(ctx)
		if err != nil || wait <= 0 {
			return 0, err
		}
		if !deadline.IsZero() && time.Now().Add(wait).After(deadline) {
			return wait, ErrSpent
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, ctx.Err()
		case <-t.C:
		}
	}
}

// Pause stops every replica from spending the budget for d (the vendor's
// Retry-After). A longer pause already in place is kept.
func (b *Budget) Pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	ms := d.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	// SET ... GT would need Redis 7 semantics on PX; a tiny script keeps the
	// longer of the two pauses on any version.
	if err := pauseScript.Run(ctx, b.client, []string{b.pause}, ms).Err(); err != nil {
		return fmt.Errorf("pause rate budget: %w", err)
	}
	return nil
}

var pauseScript = redis.NewScript(`
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
	redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
`)

// usageScript: KEYS are the windows, ARGV the period (microseconds) of
// each. It returns the requests within each window now.
var usageScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
	out[i] = redis.call('ZCOUNT', KEYS[i], now - tonumber(ARGV[i]), '+inf')
end
return out
`)

// Utilization is the fullest window's share of its limit right now (0..1,
// more if requests were counted past a limit): how close the vendor's
// limit is.
func (b *Budget) Utilization(ctx context.Context) (float64, error) {
	if len(b.keys) == 0 {
		return 0, nil
	}
	args := make([]any, len(b.periods))
	for i, p := range b.periods {
		args[i] = p
	}
	counts, err := usageScript.Run(ctx, b.client, b.keys, args...).Int64Slice()
	if err != nil {
		return 0, fmt.Errorf("measure rate budget: %w", err)
	}
	u := 0.0
	for i, n := range counts {
		u = max(u, float64(n)/float64(b.limits[i]))
	}
	return u, nil
}
