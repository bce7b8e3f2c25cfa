// Package periodic runs the background loops every service has (refresh a
// gauge, sweep a table, reconcile with a vendor) the same way: once at
// start, then on a ticker, until the context ends.
package periodic

import (
	"context"
	"time"
)

// Every runs fn now and then every d until ctx ends. A run that takes
// longer than d is followed at once by the next (the ticker drops the
// ticks it missed), so runs never overlap and never pile up.
func Every(ctx context.Context, d time.Duration, fn func(context.Context)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		fn(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
