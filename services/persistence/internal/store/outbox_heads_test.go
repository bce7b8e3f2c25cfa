package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/persistence/internal/store"
)

const insertEntrySQL = `INSERT INTO outbox (topic, key, payload_type, payload) VALUES ('biometrics.events.v1', $1, 1, '\x') RETURNING id`

// requireHeadsExact fails unless outbox_heads holds exactly the first
// pending entry of every key that has one.
func requireHeadsExact(t *testing.T, st *store.Store) {
	t.Helper()
	n := count(t, st, `
		SELECT count(*) FROM outbox_heads h
		FULL JOIN (SELECT key, min(id) AS id FROM outbox GROUP BY key) w ON w.key = h.key
		WHERE h.head_id IS DISTINCT FROM w.id`)
	require.Zero(t, n, "outbox_heads differs from the keys' first pending entries")
}

// waitBlockedOrDone returns once done is closed or some session of the
// test database waits for a lock.
func waitBlockedOrDone(t *testing.T, st *store.Store, done <-chan struct{}) {
	t.Helper()
	for {
		select {
		case <-done:
			return
		default:
		}
		if count(t, st, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`) > 0 {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func leaseAll(t *testing.T, st *store.Store, holder string) store.OutboxLease {
	t.Helper()
	l, err := st.Lease(context.Background(), holder, 100, time.Minute)
	require.NoError(t, err)
	return l
}

// TestOutboxHeadsAckOfLastEntryWaitsForWriter: a writer adds an entry to
// a key while the key's last pending entry is acknowledged. The ack's
// recount of the key must see the writer's entry (it waits for the
// writer's lock on the key's head), or the key would keep a pending entry
// and no head, and never be leased again.
func TestOutboxHeadsAckOfLastEntryWaitsForWriter(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	key := "heads-" + uuid.NewString()
	var first int64
	require.NoError(t, st.Pool().QueryRow(ctx, insertEntrySQL, key).Scan(&first))
	l := leaseAll(t, st, "p1")
	require.Len(t, l.Entries, 1)

	writer, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = writer.Rollback(ctx) }()
	var second int64
	require.NoError(t, writer.QueryRow(ctx, insertEntrySQL, key).Scan(&second))

	done := make(chan struct{})
	var acked int
	var ackErr error
	go func() {
		defer close(done)
		acked, ackErr = st.Ack(ctx, uuid.MustParse(l.Token), []int64{first})
	}()
	waitBlockedOrDone(t, st, done)
	require.NoError(t, writer.Commit(ctx))
	<-done
	require.NoError(t, ackErr)
	require.Equal(t, 1, acked)

	requireHeadsExact(t, st)
	l = leaseAll(t, st, "p2")
	require.Len(t, l.Entries, 1, "the writer's entry is never leased")
	require.Equal(t, second, l.Entries[0].GetId())
}

// TestOutboxHeadsWriterAfterUncommittedDelete: the key's last entry is
// deleted (its head with it) by a transaction still open while a writer
// adds to the key; the writer's entry must get a head back.
func TestOutboxHeadsWriterAfterUncommittedDelete(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	key := "heads-" + uuid.NewString()
	var first int64
	require.NoError(t, st.Pool().QueryRow(ctx, insertEntrySQL, key).Scan(&first))

	deleter, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = deleter.Rollback(ctx) }()
	_, err = deleter.Exec(ctx, `DELETE FROM outbox WHERE id = $1`, first)
	require.NoError(t, err)

	done := make(chan struct{})
	var second int64
	var writeErr error
	go func() {
		defer close(done)
		writeErr = st.Pool().QueryRow(ctx, insertEntrySQL, key).Scan(&second)
	}()
	waitBlockedOrDone(t, st, done)
	require.NoError(t, deleter.Commit(ctx))
	<-done
	require.NoError(t, writeErr)

	requireHeadsExact(t, st)
	l := leaseAll(t, st, "p1")
	require.Len(t, l.Entries, 1)
	require.Equal(t, second, l.Entries[0].GetId())
}

// TestOutboxHeadsFollowAcksNacksAndErasure: heads stay exact through
// leases with runs, partial acks, nacks, an expired lease and an erasure
// that keeps a live lease's entries.
func TestOutboxHeadsFollowAcksNacksAndErasure(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	keys := []string{"heads-a-" + uuid.NewString(), "heads-b-" + uuid.NewString(), "heads-c-" + uuid.NewString()}
	for range 4 {
		for _, k := range keys {
			_, err := st.Pool().Exec(ctx, insertEntrySQL, k)
			require.NoError(t, err)
		}
	}
	requireHeadsExact(t, st)
	l, err := st.Lease(ctx, "p1", 6, time.Minute) // three heads, then runs
	require.NoError(t, err)
	require.Len(t, l.Entries, 6)
	tok := uuid.MustParse(l.Token)
	// Ack the first entry of every key, nack the rest.
	var ackIDs, nackIDs []int64
	seen := map[string]bool{}
	for _, e := range l.Entries {
		if !seen[e.GetKey()] {
			seen[e.GetKey()] = true
			ackIDs = append(ackIDs, e.GetId())
		} else {
			nackIDs = append(nackIDs, e.GetId())
		}
	}
	n, err := st.Ack(ctx, tok, ackIDs)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	requireHeadsExact(t, st)
	_, err = st.Nack(ctx, tok, nackIDs, "test", 0, true)
	require.NoError(t, err)
	requireHeadsExact(t, st)

	// Key a: leased and left to expire; key b: leased live; erase both.
	l2, err := st.Lease(ctx, "p2", 100, time.Minute)
	require.NoError(t, err)
	require.Len(t, l2.Entries, 9)
	_, err = st.Pool().Exec(ctx, `UPDATE outbox SET lease_expires_at = now() - interval '1 second' WHERE key = $1`, keys[0])
	require.NoError(t, err)
	for _, k := range keys[:2] {
		_, err = st.EraseUser(ctx, k, "test")
		require.NoError(t, err)
		requireHeadsExact(t, st)
	}
	// The live lease's entries of b and c are acknowledged; a's expired
	// ones were erased.
	var rest []int64
	for _, e := range l2.Entries {
		rest = append(rest, e.GetId())
	}
	_, err = st.Ack(ctx, uuid.MustParse(l2.Token), rest)
	require.NoError(t, err)
	requireHeadsExact(t, st)
	// What is left: the two user_erased events, each its key's head.
	l3, err := st.Lease(ctx, "p3", 100, time.Minute)
	require.NoError(t, err)
	require.Len(t, l3.Entries, 2)
	_, err = st.Ack(ctx, uuid.MustParse(l3.Token), []int64{l3.Entries[0].GetId(), l3.Entries[1].GetId()})
	require.NoError(t, err)
	requireHeadsExact(t, st)
	require.Zero(t, count(t, st, `SELECT count(*) FROM outbox_heads`))
}

// TestLeaseHeadsCostDoesNotGrowWithPendingKeys: finding a batch of heads
// reads about the batch (plus the heads leased ahead of it), not every key
// with pending entries.
func TestLeaseHeadsCostDoesNotGrowWithPendingKeys(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	_, err := st.Pool().Exec(ctx, `INSERT INTO outbox (topic, key, payload_type, payload)
		SELECT 'biometrics.events.v1', 'plan-' || (g % 3000), 1, '\x' FROM generate_series(1, 6000) g`)
	require.NoError(t, err)
	_, err = st.Pool().Exec(ctx, `ANALYZE outbox; ANALYZE outbox_heads`)
	require.NoError(t, err)
	// 50 heads leased ahead of the batch.
	l, err := st.Lease(ctx, "p1", 50, time.Minute)
	require.NoError(t, err)
	require.Len(t, l.Entries, 50)

	var plan []map[string]any
	var raw []byte
	require.NoError(t, st.Pool().QueryRow(ctx, `EXPLAIN (ANALYZE, FORMAT JSON) `+store.LeaseHeadsSQL, 20).Scan(&raw))
	require.NoError(t, json.Unmarshal(raw, &plan))
	var rows float64
	var walk func(n map[string]any)
	walk = func(n map[string]any) {
		r, _ := n["Actual Rows"].(float64)
		loops, _ := n["Actual Loops"].(float64)
		rows += r * loops
		kids, _ := n["Plans"].([]any)
		for _, k := range kids {
			walk(k.(map[string]any))
		}
	}
	walk(plan[0]["Plan"].(map[string]any))
	require.Less(t, rows, 1000.0, fmt.Sprintf("finding 20 heads produced %v rows over the plan's nodes with 3000 keys pending", rows))
}

// TestRenewCountsTheRunsItHolds: a renewal renews every entry of the runs
// the lease still holds, through partial acks and nacks, and nothing once
// the lease expired or was taken over.
func TestRenewCountsTheRunsItHolds(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	keys := []string{"renew-a-" + uuid.NewString(), "renew-b-" + uuid.NewString(), "renew-c-" + uuid.NewString()}
	for range 4 {
		for _, k := range keys {
			_, err := st.Pool().Exec(ctx, insertEntrySQL, k)
			require.NoError(t, err)
		}
	}
	l, err := st.Lease(ctx, "p1", 12, time.Minute) // three heads and their runs
	require.NoError(t, err)
	require.Len(t, l.Entries, 12)
	tok := uuid.MustParse(l.Token)
	renewed := func(tok uuid.UUID) int {
		t.Helper()
		n, _, err := st.Renew(ctx, tok, time.Minute)
		require.NoError(t, err)
		return n
	}
	require.Equal(t, 12, renewed(tok))

	// The first entry of every key published, the last of the first key
	// failed.
	byKey := map[string][]int64{}
	for _, e := range l.Entries {
		byKey[e.GetKey()] = append(byKey[e.GetKey()], e.GetId())
	}
	var ackIDs []int64
	for _, k := range keys {
		ackIDs = append(ackIDs, byKey[k][0])
	}
	n, err := st.Ack(ctx, tok, ackIDs)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.Equal(t, 9, renewed(tok))
	n, err = st.Nack(ctx, tok, byKey[keys[0]][3:], "test", 0, true)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, 8, renewed(tok))

	// Expired: nothing to renew, and a new holder takes the entries over.
	_, err = st.Pool().Exec(ctx, `UPDATE outbox SET lease_expires_at = now() - interval '1 second' WHERE lease_token = $1`, tok)
	require.NoError(t, err)
	require.Zero(t, renewed(tok))
	l2, err := st.Lease(ctx, "p2", 12, time.Minute)
	require.NoError(t, err)
	require.Len(t, l2.Entries, 9)
	require.Zero(t, renewed(tok), "the old token does not touch the new holder's lease")
	require.Equal(t, 9, renewed(uuid.MustParse(l2.Token)))
	requireHeadsExact(t, st)
}
