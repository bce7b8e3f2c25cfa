package ingesttest

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/services/ingest/server"
)

// Invalid signatures, replays outside the tolerance and malformed bodies
// are refused with 401/401/400 and stable reasons, and nothing is queued.
func TestWebhookRejections(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{})
	secret := emulator.DefaultWhoopClientSecret
	good := []byte(`{"user_id":123,"id":"ecfc6a15-4661-442f-a9a4-f160dd7afae8","type":"sleep.updated","trace_id":"t-1"}`)
	now := time.Now()
	oura := []byte(`{"event_type":"create","data_type":"sleep","object_id":"o-1","event_time":"2026-11-20T07:59:00+01:00","user_id":"u-1"}`)

	tests := []struct {
		name   string
		send   func() *http.Response
		status int
		reason string
	}{
		{"whoop wrong secret", func() *http.Response { return e.postWhoop(good, "not-the-secret", now) }, 401, "invalid_signature"},
		{"whoop body changed after signing", func() *http.Response {
			ts := strconv.FormatInt(now.UnixMilli(), 10)
			req, _ := http.NewRequest(http.MethodPost, e.gatewayURL+"/v1/webhooks/whoop", bytes.NewReader(bytes.Replace(good, []byte("123"), []byte("124"), 1)))
			req.Header.Set("X-WHOOP-Signature-Timestamp", ts)
			req.Header.Set("X-WHOOP-Signature", emulator.WhoopSignature(secret, ts, good))
			res, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			return res
		}, 401, "invalid_signature"},
		{"whoop missing signature", func() *http.Response {
			req, _ := http.NewRequest(http.MethodPost, e.gatewayURL+"/v1/webhooks/whoop", bytes.NewReader(good))
			req.Header.Set("X-WHOOP-Signature-Timestamp", strconv.FormatInt(now.UnixMilli(), 10))
			res, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			return res
		}, 401, "missing_signature"},
		{"whoop replay outside the tolerance", func() *http.Response { return e.postWhoop(good, secret, now.Add(-6*time.Minute)) }, 401, "stale_timestamp"},
		{"whoop malformed body with a valid signature", func() *http.Response {
			return e.postWhoop([]byte(`{"user_id":"abc","id":"x","type":"sleep.updated"}`), secret, now)
		}, 400, "malformed_body"},
		{"whoop not json", func() *http.Response { return e.postWhoop([]byte(`user_id=1`), secret, now) }, 400, "malformed_body"},
		{"oura wrong secret", func() *http.Response { return e.postOura(oura, secret, now) }, 401, "invalid_signature"},
		{"oura stale", func() *http.Response {
			return e.postOura(oura, emulator.DefaultOuraClientSecret, now.Add(-10*time.Minute))
		}, 401, "stale_timestamp"},
		{"oura malformed", func() *http.Response {
			return e.postOura([]byte(`{"event_type":"explode"}`), emulator.DefaultOuraClientSecret, now)
		}, 400, "malformed_body"},
		{"oversized body", func() *http.Response {
			big := append([]byte(`{"user_id":1,"id":"x","type":"sleep.updated","pad":"`), bytes.Repeat([]byte("a"), 2<<20)...)
			return e.postWhoop(append(big, `"}`...), secret, now)
		}, 413, "body_too_large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body, reason := answer(t, tt.send())
			assert.Equal(t, tt.status, status, body)
			assert.Equal(t, tt.reason, reason, body)
		})
	}
	assert.Empty(t, e.jobCounts(), "nothing was queued")
	reg := e.ingest.Registry()
	assert.Equal(t, 3.0, counter(t, reg, "biobridge_ingest_webhooks_total", map[string]string{"vendor": "whoop", "outcome": "rejected", "reason": "invalid_signature"})+
		counter(t, reg, "biobridge_ingest_webhooks_total", map[string]string{"vendor": "oura", "outcome": "rejected", "reason": "invalid_signature"}))
	assert.Equal(t, 2.0, counter(t, reg, "biobridge_ingest_webhooks_total", map[string]string{"outcome": "rejected", "reason": "stale_timestamp"}))

	// The same signed body, fresh, is accepted: the rejections above were
	// about the signature, time and shape, not the route.
	status, body, _ := answer(t, e.postWhoop(good, secret, time.Now()))
	require.Equal(t, http.StatusOK, status, body)
	assert.Contains(t, body, `"status":"WEBHOOK_STATUS_ACCEPTED"`)
	assert.Contains(t, body, `"delivery_id":"t-1"`)
}

// Redeliveries of one event (same trace_id, fresh signature each time, as
// vendors retry) queue exactly one job, even when they arrive at once.
func TestDuplicateDeliveriesQueueOneJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{ingest: func(c *server.Config) { c.Workers = 1 }})
	whoop := []byte(`{"user_id":4242,"id":"11111111-2222-4333-8444-555555555555","type":"workout.updated","trace_id":"dup-trace"}`)
	oura := []byte(`{"event_type":"update","data_type":"daily_readiness","object_id":"doc-1","event_time":"2026-11-20T07:59:00+01:00","user_id":"oura-u"}`)
	var wg sync.WaitGroup
	statuses := make(chan string, 20)
	for range 10 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, body, _ := answer(t, e.postWhoop(whoop, emulator.DefaultWhoopClientSecret, time.Now()))
			statuses <- body
		}()
		go func() {
			defer wg.Done()
			_, body, _ := answer(t, e.postOura(oura, emulator.DefaultOuraClientSecret, time.Now()))
			statuses <- body
		}()
	}
	wg.Wait()
	close(statuses)
	accepted, duplicate := 0, 0
	for s := range statuses {
		switch {
		case strings.Contains(s, "WEBHOOK_STATUS_ACCEPTED"):
			accepted++
		case strings.Contains(s, "WEBHOOK_STATUS_DUPLICATE"):
			duplicate++
		default:
			t.Errorf("unexpected answer %s", s)
		}
	}
	assert.Equal(t, 2, accepted, "one per event")
	assert.Equal(t, 18, duplicate)
	var n int
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM ingest.jobs`).Scan(&n))
	assert.Equal(t, 2, n)

	// Neither vendor user is connected: the jobs end as unknown_user, and
	// the notifications were acknowledged all the same (retrying cannot help).
	e.waitJobsSettled(10 * time.Second)
	assert.Equal(t, map[string]int{"unknown_user": 2}, e.outcomes())
	assert.Equal(t, 2.0, counter(t, e.ingest.Registry(), "biobridge_ingest_webhooks_unknown_user_total", nil))
	assert.Equal(t, 18.0, counter(t, e.ingest.Registry(), "biobridge_ingest_webhooks_total", map[string]string{"outcome": "duplicate"}))
}

// Past MAX_CONCURRENT_WEBHOOKS and the wait budget, webhooks are shed
// with 503 and Retry-After (vendors retry), never left hanging.
func TestWebhookLoadShedding(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{ingest: func(c *server.Config) {
		c.MaxConcurrentWebhooks = 1
		c.WebhookWaitBudget = time.Nanosecond
	}})
	var shed *http.Response
	require.Eventually(t, func() bool {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body := []byte(`{"user_id":1,"id":"x` + strconv.Itoa(i) + `","type":"sleep.updated","trace_id":"` + strconv.FormatInt(time.Now().UnixNano(), 36) + strconv.Itoa(i) + `"}`)
				res := e.postWhoop(body, emulator.DefaultWhoopClientSecret, time.Now())
				mu.Lock()
				defer mu.Unlock()
				if res.StatusCode == http.StatusServiceUnavailable && shed == nil {
					shed = res
					return
				}
				_ = res.Body.Close()
			}()
		}
		wg.Wait()
		return shed != nil
	}, 20*time.Second, 10*time.Millisecond, "a burst past one slot with no wait budget is shed")
	assert.Equal(t, "1", shed.Header.Get("Retry-After"))
	_, _, reason := answer(t, shed)
	assert.Equal(t, "overloaded", reason)
	assert.Positive(t, counter(t, e.ingest.Registry(), "biobridge_ingest_webhooks_total", map[string]string{"outcome": "shed", "reason": "overloaded"}))
}

// ListJobs and RetryJobs need a service token.
func TestJobRPCsNeedAServiceToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{})
	_, err := e.ingestRPC.ListJobs(context.Background(), &ingestv1.ListJobsRequest{})
	require.Error(t, err)
	_, err = e.ingestRPC.RetryJobs(svc("wrong"), &ingestv1.RetryJobsRequest{})
	require.Error(t, err)
	resp, err := e.ingestRPC.ListJobs(svc(opsToken), &ingestv1.ListJobsRequest{})
	require.NoError(t, err)
	assert.Empty(t, resp.GetJobs())
}

// Acknowledging needs only PostgreSQL: with the token broker unreachable
// a webhook is still committed and answered at once; the worker retries.
func TestAcceptedWhileTheBrokerIsDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{ingest: func(c *server.Config) { c.TokenBrokerTarget = "127.0.0.1:1" }})
	body := []byte(`{"user_id":77,"id":"22222222-3333-4444-8555-666666666666","type":"sleep.updated","trace_id":"down-1"}`)
	status, out, _ := answer(t, e.postWhoop(body, emulator.DefaultWhoopClientSecret, time.Now()))
	require.Equal(t, http.StatusOK, status, out)
	assert.Contains(t, out, "WEBHOOK_STATUS_ACCEPTED")
	require.Eventually(t, func() bool {
		var lastErr string
		err := e.db.QueryRow(context.Background(), `SELECT last_error FROM ingest.jobs WHERE dedupe_key = 'down-1'`).Scan(&lastErr)
		return err == nil && strings.Contains(lastErr, "resolve vendor user")
	}, 20*time.Second, 50*time.Millisecond, "the worker keeps the job and retries: %s", e.debugJobs())
	assert.Zero(t, e.jobCounts()["dead"])
}

// Concurrent webhooks go through the group committer (they may share
// transactions) and each 200 still means its job is committed: the job is
// in the table as soon as its answer arrives.
func TestConcurrentWebhooksAreCommittedBeforeTheAnswer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{ingest: func(c *server.Config) { c.Workers = 1 }})
	const n = 30
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			trace := fmt.Sprintf("group-trace-%d", i)
			body := fmt.Appendf(nil, `{"user_id":%d,"id":"11111111-2222-4333-8444-%012d","type":"workout.updated","trace_id":"%s"}`, 5000+i, i, trace)
			status, answerBody, _ := answer(t, e.postWhoop(body, emulator.DefaultWhoopClientSecret, time.Now()))
			if !assert.Equal(t, http.StatusOK, status, answerBody) || !assert.Contains(t, answerBody, "WEBHOOK_STATUS_ACCEPTED") {
				return
			}
			var jobs int
			assert.NoError(t, e.db.QueryRow(context.Background(),
				`SELECT count(*) FROM ingest.jobs WHERE vendor = 'whoop' AND dedupe_key = $1`, trace).Scan(&jobs))
			assert.Equal(t, 1, jobs, "%s is committed when its 200 arrives", trace)
		})
	}
	wg.Wait()
	mfs, err := e.ingest.Registry().Gather()
	require.NoError(t, err)
	var merged *dto.Histogram
	for _, mf := range mfs {
		if mf.GetName() == "biobridge_ingest_webhook_group_commit_requests" {
			merged = mf.GetMetric()[0].GetHistogram()
		}
	}
	require.NotNil(t, merged, "webhook jobs go through the group committer")
	assert.EqualValues(t, n, merged.GetSampleSum(), "every accepted webhook's job was in a group-commit transaction")
	assert.LessOrEqual(t, merged.GetSampleCount(), uint64(n))
}
