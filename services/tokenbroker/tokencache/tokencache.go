// Package tokencache keeps sealed access tokens in Redis so most
// GetAccessToken calls cost one GET instead of a database read and a
// decryption of the refresh token.
//
// Entries hold only ciphertext (sealed by the broker with the same keyring
// as the database), the connection version they came from and the token's
// expiry; they expire from Redis a safety margin before the token does.
// Keys carry the user's hash tag, so they live on one Redis Cluster slot
// with the user's other keys.
//
// The package is outside internal/ so that the broker's tests in the
// devstack module (services/devstack/tokenbrokertest) can act as a
// concurrent cache writer through the real versioned Put.
package tokencache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Entry is one cached access token, sealed.
type Entry struct {
	Version   int64     `json:"v"`
	KeyID     string    `json:"k"`
	Sealed    []byte    `json:"c"`
	ExpiresAt time.Time `json:"e"`
}

// Cache is the Redis token cache.
type Cache struct {
	client redis.UniversalClient
	prefix string
}

// New returns a Cache whose keys start with prefix (REDIS_KEY_PREFIX).
func New(client redis.UniversalClient, prefix string) *Cache {
	return &Cache{client: client, prefix: prefix}
}

// Key is the cache key of a connection.
func (c *Cache) Key(userID, vendor string) string {
	return c.prefix + "bb:{u:" + userID + "}:token:" + vendor
}

// LockKey is the refresh lock key of a connection (same hash tag).
func (c *Cache) LockKey(userID, vendor string) string {
	return c.prefix + "bb:{u:" + userID + "}:tokenlock:" + vendor
}

// Get returns the entry, or (nil, nil) when there is none.
func (c *Cache) Get(ctx context.Context, userID, vendor string) (*Entry, error) {
	b, err := c.client.Get(ctx, c.Key(userID, vendor)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read token cache: %w", err)
	}
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		// A malformed entry is a miss, not an outage.
		return nil, nil
	}
	return &e, nil
}

// Put stores e until ttl. A stale writer must not overwrite a newer token,
// so the entry is only replaced when its version is not newer than e's.
func (c *Cache) Put(ctx context.Context, userID, vendor string, e Entry, ttl time.Duration) error {
	if ttl <= 0 {
		return nil
	}
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode token cache entry: %w", err)
	}
	if err := putScript.Run(ctx, c.client, []string{c.Key(userID, vendor)}, b, e.Version, ttl.Milliseconds()).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("write token cache: %w", err)
	}
	return nil
}

// putScript writes ARGV[1] with a PX of ARGV[3] unless the current entry's
// version is newer than ARGV[2].
var putScript = redis.NewScript(`
local cur = redis.call("GET", KEYS[1])
if cur then
	local ok, dec = pcall(cjson.decode, cur)
	if ok and type(dec) == "table" and tonumber(dec["v"]) and tonumber(dec["v"]) > tonumber(ARGV[2]) then
		return 0
	end
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[3])
return 1
`)

// ParkedKey is the key of a connection's parked refresh result.
func (c *Cache) ParkedKey(userID, vendor string) string {
	return c.prefix + "bb:{u:" + userID + "}:tokenparked:" + vendor
}

// Parked is the sealed result of a refresh the vendor answered but the
// database could not record in time. BaseVersion is the connection version
// the refresh was made from: the result replaces exactly that version.
type Parked struct {
	BaseVersion     int64     `json:"v"`
	KeyID           string    `json:"k"`
	AccessTokenEnc  []byte    `json:"a"`
	RefreshTokenEnc []byte    `json:"r"`
	AccessExpiresAt time.Time `json:"e"`
}

// Park keeps p until ttl. It holds ciphertext only.
func (c *Cache) Park(ctx context.Context, userID, vendor string, p Parked, ttl time.Duration) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode parked refresh: %w", err)
	}
	if err := c.client.Set(ctx, c.ParkedKey(userID, vendor), b, ttl).Err(); err != nil {
		return fmt.Errorf("park refresh result: %w", err)
	}
	return nil
}

// ParkedResult returns the parked refresh result, or (nil, nil) when
// there is none.
func (c *Cache) ParkedResult(ctx context.Context, userID, vendor string) (*Parked, error) {
	b, err := c.client.Get(ctx, c.ParkedKey(userID, vendor)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read parked refresh: %w", err)
	}
	var p Parked
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("decode parked refresh: %w", err)
	}
	return &p, nil
}

// unparkScript deletes KEYS[1] only when its base version is at most
// ARGV[1]: a result parked from a newer version is left alone.
var unparkScript = redis.NewScript(`
local cur = redis.call("GET", KEYS[1])
if not cur then
	return 0
end
local ok, dec = pcall(cjson.decode, cur)
if ok and type(dec) == "table" and tonumber(dec["v"]) and tonumber(dec["v"]) > tonumber(ARGV[1]) then
	return 0
end
return redis.call("DEL", KEYS[1])
`)

// Unpark drops the parked result once the connection moved past
// stored (the result was stored, or superseded).
func (c *Cache) Unpark(ctx context.Context, userID, vendor string, stored int64) error {
	if err := unparkScript.Run(ctx, c.client, []string{c.ParkedKey(userID, vendor)}, stored).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("drop parked refresh: %w", err)
	}
	return nil
}

// Delete removes the entry (revoke, broken connection).
func (c *Cache) Delete(ctx context.Context, userID, vendor string) error {
	if err := c.client.Del(ctx, c.Key(userID, vendor)).Err(); err != nil {
		return fmt.Errorf("delete token cache: %w", err)
	}
	return nil
}

// Forget removes a connection's cached token and its refresh lock (the
// user's erasure: no key about the user may stay behind).
func (c *Cache) Forget(ctx context.Context, userID, vendor string) error {
	if err := c.client.Del(ctx, c.Key(userID, vendor), c.LockKey(userID, vendor)).Err(); err != nil {
		return fmt.Errorf("delete token cache: %w", err)
	}
	return nil
}
