package server_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/persistence/server"
)

// TestConcurrentLeaseAckDeliversEverything runs concurrent writers and
// concurrent publisher clients. One transaction takes an outbox id and
// holds its commit while later ids commit, so commits happen out of id
// order (the case that loses rows for an `id > last_seen` relay). Every
// entry must be delivered, and each key's entries in commit order.
func TestConcurrentLeaseAckDeliversEverything(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The slow transaction: a writer for its own user, holding its lock
	// and its outbox id, committing only after many later ids committed.
	slowUser := newUser()
	slow, err := e.db.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = slow.Rollback(context.Background()) }() // no-op once committed
	var slowID int64
	require.NoError(t, slow.QueryRow(ctx, `INSERT INTO outbox (topic, key, payload_type, payload)
		SELECT topic, $1, payload_type, payload FROM (VALUES ('biometrics.events.v1', 1, '\x'::bytea)) v(topic, payload_type, payload)
		RETURNING id`, slowUser).Scan(&slowID))

	type delivery struct {
		id      int64
		key     string
		version int64
		record  string
	}
	var mu sync.Mutex
	var delivered []delivery
	var wg sync.WaitGroup
	stopLeasing := make(chan struct{})
	for p := range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stopLeasing:
					return
				default:
				}
				resp, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{
					Holder: fmt.Sprintf("publisher-%d", p), MaxEntries: int32(7 + p*5), WaitTimeout: durationpb.New(100 * time.Millisecond)})
				if !noErr(t, err) {
					return
				}
				var ids []int64
				mu.Lock()
				for _, en := range resp.GetEntries() {
					ids = append(ids, en.GetId())
					delivered = append(delivered, delivery{en.GetId(), en.GetKey(), en.GetEvent().GetVersion(), en.GetEvent().GetVendorRecordId()})
				}
				mu.Unlock()
				if len(ids) == 0 {
					continue
				}
				ack, err := e.persistence.AckOutbox(e.ingestCtx(), &persistencev1.AckOutboxRequest{LeaseToken: resp.GetLeaseToken(), Ids: ids})
				if !noErr(t, err) {
					return
				}
				if int(ack.GetAcked()) != len(ids) {
					t.Errorf("acked %d of %d", ack.GetAcked(), len(ids))
				}
			}
		})
	}

	// Writers: 8 users, each record written in 3 versions, concurrently.
	users := make([]string, 8)
	for i := range users {
		users[i] = newUser()
	}
	at := time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC)
	var writers sync.WaitGroup
	for w, u := range users {
		writers.Go(func() {
			for v := range 3 {
				for r := range 10 {
					_, err := e.persistence.WriteEvents(e.ingestCtx(), &persistencev1.WriteEventsRequest{Events: []*persistencev1.EventInput{
						event(u, fmt.Sprintf("rec-%d", r), reading("heart_rate_bpm", float64(50+v+w), at.Add(time.Duration(r)*time.Minute))),
					}})
					noErr(t, err)
				}
			}
		})
	}
	writers.Wait()
	// Later ids committed; now the early one commits.
	// (The publishers may have acknowledged and deleted every later row
	// already: ask the sequence.)
	var maxID int64
	require.NoError(t, e.db.QueryRow(ctx, `SELECT pg_sequence_last_value('outbox_id_seq')`).Scan(&maxID))
	require.Greater(t, maxID, slowID)
	require.NoError(t, slow.Commit(ctx))

	want := len(users)*30 + 1
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		seen := map[int64]bool{}
		for _, d := range delivered {
			seen[d.id] = true
		}
		return len(seen) == want
	}, 30*time.Second, 20*time.Millisecond)
	close(stopLeasing)
	wg.Wait()
	require.Zero(t, e.count(`SELECT count(*) FROM outbox`), "everything acknowledged")

	// Per key, first deliveries come in commit order: each record's
	// versions 1, 2, 3 and ids increasing.
	mu.Lock()
	defer mu.Unlock()
	lastID := map[string]int64{}
	lastVersion := map[string]int64{}
	for _, d := range delivered {
		if d.key == slowUser {
			continue
		}
		require.Greater(t, d.id, lastID[d.key], "key %s out of order", d.key)
		lastID[d.key] = d.id
		rk := d.key + "/" + d.record
		require.Equal(t, lastVersion[rk]+1, d.version, "record %s", rk)
		lastVersion[rk] = d.version
	}
}

// TestExpiredLeaseReturnsToPool: a publisher that dies keeps nothing.
func TestExpiredLeaseReturnsToPool(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	e.write(event(user, "a", reading("heart_rate_bpm", 60, time.Now().Add(-time.Minute))))

	first, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "dies", LeaseDuration: durationpb.New(time.Second)})
	require.NoError(t, err)
	require.Len(t, first.GetEntries(), 1)
	require.Zero(t, first.GetEntries()[0].GetAttempts())

	var second *persistencev1.LeaseOutboxResponse
	require.Eventually(t, func() bool {
		second, err = e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "survivor"})
		return err == nil && len(second.GetEntries()) == 1
	}, 10*time.Second, 50*time.Millisecond)
	require.Zero(t, second.GetEntries()[0].GetAttempts(), "a lease is not a publish attempt")

	// The old holder's ack no longer counts; the new holder's does.
	ack, err := e.persistence.AckOutbox(e.ingestCtx(), &persistencev1.AckOutboxRequest{LeaseToken: first.GetLeaseToken(), Ids: []int64{first.GetEntries()[0].GetId()}})
	require.NoError(t, err)
	require.Zero(t, ack.GetAcked())
	ack, err = e.persistence.AckOutbox(e.ingestCtx(), &persistencev1.AckOutboxRequest{LeaseToken: second.GetLeaseToken(), Ids: []int64{second.GetEntries()[0].GetId()}})
	require.NoError(t, err)
	require.EqualValues(t, 1, ack.GetAcked())
}

// TestRenewFencedByToken: a renewed lease outlives its first duration and
// keeps other holders out; once it lapses, renewing fails and the new
// holder's lease is untouched by the old token.
func TestRenewFencedByToken(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	e.write(event(user, "a", reading("heart_rate_bpm", 60, time.Now().Add(-time.Minute))))

	first, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "slow", LeaseDuration: durationpb.New(time.Second)})
	require.NoError(t, err)
	require.Len(t, first.GetEntries(), 1)
	left := first.GetLeaseRemaining().AsDuration()
	require.Greater(t, left, time.Duration(0))
	require.LessOrEqual(t, left, time.Second, "measured by the database after the lease started")

	renew, err := e.persistence.RenewOutboxLease(e.ingestCtx(), &persistencev1.RenewOutboxLeaseRequest{LeaseToken: first.GetLeaseToken(), LeaseDuration: durationpb.New(time.Hour)})
	require.NoError(t, err)
	require.EqualValues(t, 1, renew.GetRenewed())
	require.Greater(t, renew.GetLeaseRemaining().AsDuration(), 59*time.Minute)
	_, err = e.db.Exec(t.Context(), `UPDATE outbox SET lease_expires_at = now() - interval '1 second'`) // the lease runs out
	require.NoError(t, err)
	renew, err = e.persistence.RenewOutboxLease(e.ingestCtx(), &persistencev1.RenewOutboxLeaseRequest{LeaseToken: first.GetLeaseToken(), LeaseDuration: durationpb.New(time.Hour)})
	require.NoError(t, err)
	require.Zero(t, renew.GetRenewed(), "an expired lease cannot be renewed")

	second, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "next"})
	require.NoError(t, err)
	require.Len(t, second.GetEntries(), 1)
	renew, err = e.persistence.RenewOutboxLease(e.ingestCtx(), &persistencev1.RenewOutboxLeaseRequest{LeaseToken: first.GetLeaseToken(), LeaseDuration: durationpb.New(time.Hour)})
	require.NoError(t, err)
	require.Zero(t, renew.GetRenewed(), "the old token does not touch the new holder's lease")

	// Released without a send: attempts stay; a failed send counts once.
	_, err = e.persistence.NackOutbox(e.ingestCtx(), &persistencev1.NackOutboxRequest{LeaseToken: second.GetLeaseToken(), Ids: []int64{second.GetEntries()[0].GetId()}, Error: "not attempted"})
	require.NoError(t, err)
	third, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "next"})
	require.NoError(t, err)
	require.Len(t, third.GetEntries(), 1)
	require.Zero(t, third.GetEntries()[0].GetAttempts())
	_, err = e.persistence.NackOutbox(e.ingestCtx(), &persistencev1.NackOutboxRequest{LeaseToken: third.GetLeaseToken(), Ids: []int64{third.GetEntries()[0].GetId()}, Error: "timeout", Attempted: true})
	require.NoError(t, err)
	fourth, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "next"})
	require.NoError(t, err)
	require.Len(t, fourth.GetEntries(), 1)
	require.EqualValues(t, 1, fourth.GetEntries()[0].GetAttempts())
}

// TestNackedHeadBlocksItsKeyOnly: while a key's first entry waits out its
// retry delay, the key's later entries are not handed out; other keys
// are.
func TestNackedHeadBlocksItsKeyOnly(t *testing.T) {
	t.Parallel()
	e := start(t)
	blocked, free := newUser(), newUser()
	at := time.Now().Add(-time.Hour)
	e.write(event(blocked, "1", reading("heart_rate_bpm", 60, at)))
	e.write(event(blocked, "2", reading("heart_rate_bpm", 61, at)))

	l, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "p", MaxEntries: 1})
	require.NoError(t, err)
	require.Len(t, l.GetEntries(), 1)
	require.Equal(t, "1", l.GetEntries()[0].GetEvent().GetVendorRecordId())
	_, err = e.persistence.NackOutbox(e.ingestCtx(), &persistencev1.NackOutboxRequest{LeaseToken: l.GetLeaseToken(),
		Ids: []int64{l.GetEntries()[0].GetId()}, Error: "broker down", RetryAfter: durationpb.New(time.Hour)})
	require.NoError(t, err)

	e.write(event(free, "x", reading("heart_rate_bpm", 60, at)))
	l, err = e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "p"})
	require.NoError(t, err)
	require.Len(t, l.GetEntries(), 1)
	require.Equal(t, free, l.GetEntries()[0].GetKey())

	stats, err := e.persistence.GetOutboxStats(e.ingestCtx(), &persistencev1.GetOutboxStatsRequest{})
	require.NoError(t, err)
	require.EqualValues(t, 3, stats.GetPending())
	require.EqualValues(t, 1, stats.GetLeased())
	require.NotNil(t, stats.GetOldestPendingAt())
}

// TestLongPollIsWokenByCommit: with a poll interval longer than the time
// the test waits (the longest Validate accepts, 1m, against 40s), a waiting
// LeaseOutbox can only return entries if the commit's NOTIFY woke it.
func TestLongPollIsWokenByCommit(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *server.Config) { c.OutboxPollInterval = time.Minute })
	user := newUser()
	got := make(chan *persistencev1.LeaseOutboxResponse, 1)
	go func() {
		resp, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "p", WaitTimeout: durationpb.New(45 * time.Second)})
		if noErr(t, err) {
			got <- resp
		}
	}()
	// Let the call start waiting (it may also still be looking: either way
	// it must end up with the entry).
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	e.write(event(user, "a", reading("heart_rate_bpm", 60, time.Now())))
	select {
	case resp := <-got:
		require.Len(t, resp.GetEntries(), 1)
		t.Logf("commit to lease: %s", time.Since(start))
	case <-time.After(40 * time.Second):
		t.Fatal("long poll was not woken by the commit")
	}
}
