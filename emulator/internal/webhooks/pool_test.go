package webhooks

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator/internal/store"
)

type fakeHost struct {
	mu   sync.Mutex
	gone []*Job
}

func (h *fakeHost) Shuffle(n int, swap func(i, j int)) {
	for i := range n / 2 {
		swap(i, n-1-i)
	}
}

func (h *fakeHost) Gone(j *Job) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gone = append(h.gone, j)
}

func newTestPool(t *testing.T, host Host, counters *store.CounterSet) *Pool {
	t.Helper()
	now := time.Unix(1_700_000_000, 123_000_000)
	p := NewPool(Config{
		QueueSize: 8, Workers: 2, ReorderWindow: time.Millisecond,
		RetryDelays: []time.Duration{time.Millisecond, time.Millisecond}, Timeout: 5 * time.Second,
		HTTPClient: http.DefaultClient, WhoopSecret: "ws", OuraSecret: "os",
		Now: func() time.Time { return now }, Log: slog.New(slog.DiscardHandler),
	}, host, counters)
	t.Cleanup(func() { require.NoError(t, p.Close(context.Background())) })
	return p
}

func waitIdle(t *testing.T, p *Pool) {
	t.Helper()
	require.Eventually(t, func() bool { return p.Pending() == 0 }, 10*time.Second, time.Millisecond)
}

func TestPoolSignsEachVendorsWayAndRetriesUntilItGivesUp(t *testing.T) {
	t.Parallel()
	type got struct {
		header http.Header
		body   string
	}
	var mu sync.Mutex
	var seen []got
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, got{r.Header.Clone(), string(b)})
		mu.Unlock()
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	counters := store.NewCounterSet()
	p := newTestPool(t, &fakeHost{}, counters)

	p.Submit([]*Job{{Vendor: store.Whoop, URL: srv.URL + "/ok", Body: []byte(`{"w":1}`)}})
	waitIdle(t, p)
	p.Submit([]*Job{{Vendor: store.Oura, URL: srv.URL + "/fail", Body: []byte(`{"o":1}`)}})
	waitIdle(t, p)

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, 4, "one WHOOP delivery, then one Oura attempt and two retries")
	w := seen[0].header
	require.Equal(t, strconv.FormatInt(1_700_000_000_123, 10), w.Get("X-WHOOP-Signature-Timestamp"))
	require.Equal(t, WhoopSignature("ws", "1700000000123", []byte(`{"w":1}`)), w.Get("X-WHOOP-Signature"))
	for _, o := range seen[1:] {
		require.Equal(t, "1700000000", o.header.Get("x-oura-timestamp"))
		require.Equal(t, OuraSignature("os", "1700000000", []byte(`{"o":1}`)), o.header.Get("x-oura-signature"))
		require.JSONEq(t, `{"o":1}`, o.body)
	}
	c := counters.Snapshot()
	require.EqualValues(t, 1, c.Whoop.WebhooksDelivered)
	require.EqualValues(t, 3, c.Oura.WebhookAttempts)
	require.EqualValues(t, 2, c.Oura.WebhookRetries)
	require.EqualValues(t, 1, c.Oura.WebhooksFailed)
}

func TestPoolReportsAnOura410ToTheHostOnce(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusGone)
	}))
	defer srv.Close()
	host := &fakeHost{}
	counters := store.NewCounterSet()
	p := newTestPool(t, host, counters)
	j := &Job{Vendor: store.Oura, URL: srv.URL, Body: []byte(`{}`), SubID: "sub-1"}
	p.Submit([]*Job{j})
	waitIdle(t, p)

	host.mu.Lock()
	defer host.mu.Unlock()
	require.Equal(t, []*Job{j}, host.gone)
	c := counters.Snapshot()
	require.EqualValues(t, 1, c.Oura.SubscriptionsGone)
	require.EqualValues(t, 1, c.Oura.WebhookAttempts, "a 410 is not retried")
}

func TestPoolNeverReleasesHeldJobsInTheirOriginalOrder(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var order []string
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		mu.Lock()
		order = append(order, r.URL.Path)
		mu.Unlock()
	}))
	defer srv.Close()
	// The identity shuffle must still not leave the batch as it was. The
	// window is long enough for both jobs of one Submit to land in it.
	p := NewPool(Config{
		QueueSize: 8, Workers: 1, ReorderWindow: 500 * time.Millisecond, Timeout: 5 * time.Second,
		HTTPClient: http.DefaultClient, Now: time.Now, Log: slog.New(slog.DiscardHandler),
	}, identityHost{}, store.NewCounterSet())
	t.Cleanup(func() { require.NoError(t, p.Close(context.Background())) })
	p.Submit([]*Job{
		{Vendor: store.Whoop, URL: srv.URL + "/a", Hold: true},
		{Vendor: store.Whoop, URL: srv.URL + "/b", Hold: true},
	})
	waitIdle(t, p)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{"/b", "/a"}, order)
}

type identityHost struct{}

func (identityHost) Shuffle(int, func(i, j int)) {}
func (identityHost) Gone(*Job)                   {}
