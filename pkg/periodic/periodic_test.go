package periodic_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/biobridge/bridge/pkg/periodic"
)

// TestEvery runs in a synctest bubble, whose clock only moves when every
// goroutine waits: the counts are exact, not timing-dependent.
func TestEvery(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		runs := 0
		done := make(chan struct{})
		go func() {
			periodic.Every(ctx, time.Minute, func(context.Context) { runs++ })
			close(done)
		}()
		synctest.Wait()
		assert.Equal(t, 1, runs, "the first run is at once")
		time.Sleep(3*time.Minute + time.Second)
		synctest.Wait()
		assert.Equal(t, 4, runs, "then one run a period")
		cancel()
		<-done
		assert.Equal(t, 4, runs, "no run after the context ends")
	})
}

// TestEverySlowRun: a run longer than the period is followed by the next
// at once, not by a burst of the ticks it missed.
func TestEverySlowRun(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		var starts []time.Duration
		begin := time.Now()
		done := make(chan struct{})
		go func() {
			periodic.Every(ctx, time.Minute, func(context.Context) {
				starts = append(starts, time.Since(begin))
				if len(starts) == 1 {
					time.Sleep(5 * time.Minute)
				}
			})
			close(done)
		}()
		time.Sleep(7*time.Minute + time.Second)
		synctest.Wait()
		cancel()
		<-done
		assert.Equal(t, []time.Duration{0, 5 * time.Minute, 6 * time.Minute, 7 * time.Minute}, starts)
	})
}
