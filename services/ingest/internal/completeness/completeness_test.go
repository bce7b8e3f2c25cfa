package completeness

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
)

// Connections spread over the whole interval, each at a place of its own
// that does not move from round to round.
func TestOffsetsSpreadConnections(t *testing.T) {
	t.Parallel()
	const interval, buckets, n = time.Hour, 10, 5000
	counts := make([]int, buckets)
	for i := range n {
		o := Offset("whoop", fmt.Sprint("user-", i), interval)
		require.GreaterOrEqual(t, o, time.Duration(0))
		require.Less(t, o, interval)
		counts[int(o/(interval/buckets))]++
		require.Equal(t, o, Offset("whoop", fmt.Sprint("user-", i), interval), "stable")
	}
	for b, c := range counts {
		assert.InDelta(t, n/buckets, c, n/buckets/4, "bucket %d holds %d of %d", b, c, n)
	}
	assert.NotEqual(t, Offset("whoop", "u", interval), Offset("oura", "u", interval), "per connection, not per user")
	assert.Equal(t, Round(time.Unix(7200, 0), interval)+1, Round(time.Unix(10800, 0), interval))
}

type fakeBroker struct {
	tokensv1.TokenBrokerServiceClient
	mu    sync.Mutex
	fail  bool
	calls [][]*tokensv1.DataArrival
}

func (f *fakeBroker) ReportDataArrival(_ context.Context, req *tokensv1.ReportDataArrivalRequest, _ ...grpc.CallOption) (*tokensv1.ReportDataArrivalResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return nil, errors.New("broker down")
	}
	f.calls = append(f.calls, req.GetArrivals())
	return &tokensv1.ReportDataArrivalResponse{}, nil
}

// Arrivals are sent in one batch per report, one entry per connection with
// its latest time; a failed report is sent again with the next one.
func TestArrivalsAreBatchedAndRetried(t *testing.T) {
	t.Parallel()
	b := &fakeBroker{fail: true}
	l := New(Config{Vendors: []string{"whoop", "oura"}}, nil, b, nil, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	ctx := context.Background()
	l.Note("u1", "whoop")
	l.Note("u2", "oura")
	l.reportOnce(ctx)
	assert.Empty(t, b.calls)
	time.Sleep(time.Millisecond)
	l.Note("u1", "whoop")
	latest := time.Now()
	b.fail = false
	l.reportOnce(ctx)
	require.Len(t, b.calls, 1, "one call for everything pending")
	got := map[string]time.Time{}
	for _, a := range b.calls[0] {
		got[a.GetUserId()+"/"+a.GetVendor()] = a.GetArrivedAt().AsTime()
	}
	require.Len(t, got, 2, "the failed batch came back, one entry per connection")
	assert.WithinDuration(t, latest, got["u1/whoop"], 5*time.Millisecond, "the latest arrival wins")
	l.reportOnce(ctx)
	assert.Len(t, b.calls, 1, "nothing left to send")
}
