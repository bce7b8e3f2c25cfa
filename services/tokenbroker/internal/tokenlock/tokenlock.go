// Package tokenlock is a Redis lease lock that keeps token refreshes for one
// connection to one holder across every broker instance.
//
// Acquire is SET key owner NX PX lease with a random owner value; Release
// deletes the key only while it still holds that owner (compare-and-delete
// in a Lua script), so a holder whose lease already expired can never delete
// the lock a newer holder took. The lease must outlast the holder's upstream
// call deadline: then a holder that is still waiting for the vendor always
// owns the lock, and a holder that died is replaced once the lease expires.
package tokenlock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// releaseScript deletes KEYS[1] only when its value is ARGV[1].
var releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0
`)

// Locker takes leases on keys.
type Locker struct {
	client redis.UniversalClient
}

// New returns a Locker using client.
func New(client redis.UniversalClient) *Locker {
	return &Locker{client: client}
}

// Lock is a held lease.
type Lock struct {
	client  redis.UniversalClient
	key     string
	owner   string
	expires time.Time
}

// TryAcquire takes the lease on key for lease if nobody holds it. It returns
// (nil, nil) when the key is held by someone else.
func (l *Locker) TryAcquire(ctx context.Context, key string, lease time.Duration) (*Lock, error) {
	owner, err := newOwner()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	ok, err := l.client.SetNX(ctx, key, owner, lease).Result()
	if err != nil {
		return nil, fmt.Errorf("acquire lock: %w", err)
	}
	if !ok {
		return nil, nil
	}
	// The lease counts from before the SET was sent, so Expires is never
	// later than Redis's own expiry.
	return &Lock{client: l.client, key: key, owner: owner, expires: start.Add(lease)}, nil
}

// Expires is a conservative local estimate of when the lease runs out.
func (k *Lock) Expires() time.Time { return k.expires }

// Owner is the holder's random owner value (also used to name the
// holder's refresh claim in the database).
func (k *Lock) Owner() string { return k.owner }

// extendScript sets a new PX on KEYS[1] only while its value is ARGV[1].
var extendScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
`)

// Extend renews the lease for lease from now if this holder still owns
// it (compare-and-expire, so a holder whose lease already ran out never
// extends a newer holder's). It reports whether the lease was renewed.
func (k *Lock) Extend(ctx context.Context, lease time.Duration) (bool, error) {
	start := time.Now()
	n, err := extendScript.Run(ctx, k.client, []string{k.key}, k.owner, lease.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("extend lock: %w", err)
	}
	if n != 1 {
		return false, nil
	}
	k.expires = start.Add(lease)
	return true, nil
}

// Release gives the lease back if this holder still owns it. It reports
// whether the key was deleted; false means the lease had already expired
// (and possibly been taken by another holder, whose lease is left alone).
func (k *Lock) Release(ctx context.Context) (bool, error) {
	n, err := releaseScript.Run(ctx, k.client, []string{k.key}, k.owner).Int()
	if err != nil {
		return false, fmt.Errorf("release lock: %w", err)
	}
	return n == 1, nil
}

func newOwner() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("lock owner: %w", err)
	}
	return hex.EncodeToString(b), nil
}
