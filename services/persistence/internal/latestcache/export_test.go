package latestcache

import (
	"context"
	"errors"
	"time"
)

// ClientID is the Redis client id of the near-cache's connection.
func (n *Near) ClientID(ctx context.Context) (int64, error) {
	c := n.client.Load()
	if c == nil {
		return 0, errors.New("not connected")
	}
	return (*c).Do(ctx, (*c).B().ClientId().Build()).AsInt64()
}

// SetClock replaces the near-cache's clock (time since an origin).
func (n *Near) SetClock(clock func() time.Duration) { n.clock = clock }

// Barriers is the number of barriers (PINGs) the near-cache sent.
func (n *Near) Barriers() int64 { return n.pings.Load() }
