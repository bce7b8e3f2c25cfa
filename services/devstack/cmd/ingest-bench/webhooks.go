package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/biobridge/bridge/emulator"
	"github.com/biobridge/bridge/pkg/benchreport"
	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/services/devstack/benchenv"
)

// signedWebhook is one WHOOP delivery, body and headers, ready to send.
type signedWebhook struct {
	body      []byte
	signature string
	timestamp string
	traceID   string
}

func planWebhooks(n int) []signedWebhook {
	out := make([]signedWebhook, n)
	run := benchenv.RandomHex(4)
	for i := range out {
		trace := fmt.Sprintf("%s-0000-4000-8000-%012d", run, i)
		body := fmt.Appendf(nil, `{"user_id":%d,"id":"%s-1111-4111-8111-%012d","type":"sleep.updated","trace_id":"%s"}`,
			10_000_000+i%500, run, i, trace)
		ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
		out[i] = signedWebhook{body: body, signature: emulator.WhoopSignature(whoopSecret, ts, body), timestamp: ts, traceID: trace}
	}
	return out
}

// benchWebhookAccept sends signed WHOOP webhooks from `senders` concurrent
// clients through the REST gateway until each is acknowledged (a 503 is
// retried, as WHOOP would), and compares with one PostgreSQL transaction
// per webhook inserting the same rows into a table shaped like the job
// queue, with the same concurrency.
func benchWebhookAccept(ctx context.Context, s *stack, o options) ([]benchreport.Result, error) {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: o.senders, MaxConnsPerHost: o.senders}}
	send := func(w signedWebhook) (shed int, err error) {
		for {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.gatewayURL+"/v1/webhooks/whoop", bytes.NewReader(w.body))
			if err != nil {
				return shed, err
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-WHOOP-Signature", w.signature)
			req.Header.Set("X-WHOOP-Signature-Timestamp", w.timestamp)
			resp, err := client.Do(req)
			if err != nil {
				return shed, err
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
				if !bytes.Contains(b, []byte("WEBHOOK_STATUS_ACCEPTED")) {
					return shed, fmt.Errorf("webhook not accepted: %s", b)
				}
				return shed, nil
			case http.StatusServiceUnavailable, http.StatusTooManyRequests:
				shed++
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return shed, fmt.Errorf("webhook: HTTP %d: %s", resp.StatusCode, b)
		}
	}
	// Warm-up: connections, prepared statements, JIT of the hot path.
	for _, w := range planWebhooks(o.senders) {
		if _, err := send(w); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	plan := planWebhooks(o.webhooks)
	txBefore, err := webhookTransactions(s)
	if err != nil {
		return nil, err
	}
	lat := make([]time.Duration, len(plan))
	var mu sync.Mutex
	totalShed := 0
	stopProfile, err := o.profile("webhooks")
	if err != nil {
		return nil, err
	}
	elapsed, err := parallel(len(plan), o.senders, func(i int) error {
		start := time.Now()
		shed, err := send(plan[i])
		lat[i] = time.Since(start)
		mu.Lock()
		totalShed += shed
		mu.Unlock()
		return err
	})
	if err := errors.Join(err, stopProfile()); err != nil {
		return nil, err
	}
	txAfter, err := webhookTransactions(s)
	if err != nil {
		return nil, err
	}
	rate := float64(len(plan)) / elapsed.Seconds()
	p99 := percentile(lat, 0.99)
	p50 := percentile(lat, 0.50)

	baseRate, baseP99, err := insertBaseline(ctx, s.dbURL, plan, o.senders)
	if err != nil {
		return nil, err
	}
	notes := fmt.Sprintf("%d signed WHOOP webhooks from %d concurrent senders through gateway+ingest (verify, parse, group commit to ingest.jobs): "+
		"p50 %.2fms, %d shed and retried, %.0f insert transactions (%.1f webhooks each); "+
		"baseline: one INSERT transaction per webhook into an equivalent table, same concurrency, p99 %.2fms",
		len(plan), o.senders, ms(p50), totalShed, txAfter-txBefore, float64(len(plan))/max(txAfter-txBefore, 1), ms(baseP99))
	return []benchreport.Result{
		benchreport.Higher("ingest.webhook_accept_per_s", "webhooks/s", rate, baseRate, notes),
		benchreport.Lower("ingest.webhook_accept_p99_ms", "ms", ms(p99), ms(baseP99), notes),
	}, nil
}

// webhookTransactions reads how many group-commit transactions ingest has
// run for webhook jobs.
func webhookTransactions(s *stack) (float64, error) {
	mfs, err := s.ingest.Registry().Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == "biobridge_ingest_webhook_group_commit_requests" && len(mf.GetMetric()) == 1 {
			return float64(mf.GetMetric()[0].GetHistogram().GetSampleCount()), nil
		}
	}
	return 0, errors.New("ingest exposes no biobridge_ingest_webhook_group_commit_requests")
}

// insertBaseline commits the same deliveries as single-statement
// transactions into a copy of the job table (same columns, constraints and
// indexes), from as many goroutines as there are senders.
func insertBaseline(ctx context.Context, dbURL string, plan []signedWebhook, workers int) (float64, time.Duration, error) {
	sep := "?"
	if strings.Contains(dbURL, "?") {
		sep = "&"
	}
	// The same pool size ingest runs with: the comparison is about the work
	// per webhook, not about who holds more connections.
	pool, err := pgxpool.New(ctx, dbURL+sep+"pool_max_conns="+strconv.Itoa(pgstore.DefaultMaxConns))
	if err != nil {
		return 0, 0, fmt.Errorf("baseline pool: %w", err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE public.bench_jobs (LIKE ingest.jobs INCLUDING ALL)`); err != nil {
		return 0, 0, fmt.Errorf("baseline table: %w", err)
	}
	lat := make([]time.Duration, len(plan))
	elapsed, err := parallel(len(plan), workers, func(i int) error {
		start := time.Now()
		_, err := pool.Exec(ctx, `INSERT INTO public.bench_jobs (vendor, kind, dedupe_key, payload, priority)
			VALUES ('whoop', 'webhook', $1, $2, 10) ON CONFLICT (vendor, dedupe_key) DO NOTHING`, plan[i].traceID, plan[i].body)
		lat[i] = time.Since(start)
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("baseline insert: %w", err)
	}
	return float64(len(plan)) / elapsed.Seconds(), percentile(lat, 0.99), nil
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
