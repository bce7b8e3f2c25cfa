package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRecoveryIsTheFirstSuccessAfterTheLastFailure(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	end := t0.Add(10 * time.Second)
	push := func(at time.Duration, status int) sample {
		return sample{kind: "push", start: t0.Add(at), status: status}
	}
	samples := []sample{
		push(5*time.Second, 503), // during the fault: not counted
		push(11*time.Second, 503),
		push(12*time.Second, 200), // a success, then a failure again
		push(13*time.Second, 0),
		push(14*time.Second, 200), // healthy from here on
		push(15*time.Second, 200),
		{kind: "latest", start: t0.Add(16 * time.Second), status: 500}, // readers do not count
	}
	assert.Equal(t, 4*time.Second, recovery(samples, end))
	assert.Equal(t, time.Duration(0), recovery(samples[4:], end), "no failure after the fault")
	assert.Equal(t, time.Duration(-1), recovery(samples[:4], end), "never healthy again")
}

func TestSummariseCountsCodesAndP99InTheWindow(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var samples []sample
	for i := range 200 {
		samples = append(samples, sample{kind: "push", start: t0.Add(time.Duration(i) * time.Millisecond),
			latency: time.Duration(i+1) * time.Millisecond, status: 200 + 303*(i%2)})
	}
	w := summarise(samples, "push", t0, t0.Add(100*time.Millisecond))
	assert.Equal(t, 100, w.Requests)
	assert.Equal(t, map[int]int{200: 50, 503: 50}, w.Codes)
	assert.Equal(t, 99*time.Millisecond, w.P99, "the 99th of 100 latencies 1..100 ms")
	assert.Zero(t, summarise(samples, "latest", t0, t0.Add(time.Hour)).Requests)
}

// echo serves one TCP upstream that answers every connection with its name.
func echo(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(name))
			_ = c.Close()
		}
	}()
	return ln.Addr().String()
}

func read(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer func() { _ = c.Close() }()
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestProxySpreadsConnectionsSkipsADeadUpstreamAndCuts(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	require.NoError(t, dead.Close())

	p, err := newProxy("127.0.0.1:0", echo(t, "a"), echo(t, "b"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	assert.ElementsMatch(t, []string{"a", "b"}, []string{read(t, p.Addr()), read(t, p.Addr())}, "round-robin over the replicas")

	p2, err := newProxy("127.0.0.1:0", deadAddr, echo(t, "c"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = p2.Close() })
	for range 3 {
		assert.Equal(t, "c", read(t, p2.Addr()), "a refusing replica is skipped")
	}

	p.SetCut(true)
	assert.Empty(t, read(t, p.Addr()), "a cut proxy closes connections without reaching upstream")
	p.SetCut(false)
	assert.NotEmpty(t, read(t, p.Addr()))
}

func TestProxyLatencyDelaysEveryChunk(t *testing.T) {
	p, err := newProxy("127.0.0.1:0", echo(t, "slow"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	p.SetLatency(100 * time.Millisecond)
	t0 := time.Now()
	assert.Equal(t, "slow", read(t, p.Addr()))
	assert.GreaterOrEqual(t, time.Since(t0), 100*time.Millisecond, "the answer waited at least the latency")
	p.SetLatency(0)
	assert.Equal(t, "slow", read(t, p.Addr()))
}

func TestRecorderNotesWebhooksAndTheirAnswers(t *testing.T) {
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch {
		case r.URL.Path == "/v1/webhooks/whoop" && strings.Contains(string(body), `"id":"w1"`):
			_, _ = w.Write([]byte(`{"status":"WEBHOOK_STATUS_ACCEPTED","delivery_id":"trace-1"}`))
		case r.URL.Path == "/v1/webhooks/oura":
			w.WriteHeader(http.StatusUnauthorized)
		default:
			_, _ = w.Write([]byte("passed through"))
		}
	}))
	t.Cleanup(gw.Close)
	rec, err := newRecorder("127.0.0.1:0", gw.URL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rec.Close() })

	post := func(path, body string) int {
		resp, err := http.Post(rec.URL()+path, "application/json", strings.NewReader(body))
		require.NoError(t, err)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, 200, post("/v1/webhooks/whoop", `{"user_id":1,"id":"w1","type":"workout.updated","trace_id":"trace-1"}`))
	assert.Equal(t, 401, post("/v1/webhooks/oura", `{"object_id":"o1"}`))
	resp, err := http.Get(rec.URL() + "/v1/oauth/whoop/callback")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	assert.Equal(t, "passed through", string(b), "other routes are proxied, not recorded")

	got, next := rec.since(0)
	require.Len(t, got, 2)
	assert.Equal(t, 2, next)
	assert.Equal(t, delivery{vendor: "whoop", status: 200, objectID: "w1", deliveryID: "trace-1"},
		delivery{vendor: got[0].vendor, status: got[0].status, objectID: got[0].objectID, deliveryID: got[0].deliveryID})
	assert.Equal(t, delivery{vendor: "oura", status: 401, objectID: "o1"},
		delivery{vendor: got[1].vendor, status: got[1].status, objectID: got[1].objectID, deliveryID: got[1].deliveryID})
	more, _ := rec.since(next)
	assert.Empty(t, more)
}
