package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/services/persistence/internal/store"
)

// writeRun writes n new records of user in one transaction (one run) and
// returns the record ids in order.
func writeRun(t *testing.T, st *store.Store, user string, n int) []string {
	t.Helper()
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	ops := make([]store.Op, n)
	ids := make([]string, n)
	for i := range ops {
		ids[i] = fmt.Sprintf("%s-r%04d", user, i)
		ops[i] = upsert(t, user, ids[i], "recovery_score", float64(i%100), at.Add(time.Duration(i)*time.Second))
	}
	_, _, err := st.Apply(context.Background(), ops)
	require.NoError(t, err)
	return ids
}

// leased are the record ids of a lease's entries of key, with the entry
// ids, checking that both follow the write order.
func leased(t *testing.T, l store.OutboxLease, key string) (records []string, ids []int64) {
	t.Helper()
	for _, e := range l.Entries {
		if e.GetKey() != key {
			continue
		}
		var ev biometricsv1.BiometricEvent
		require.NoError(t, proto.Unmarshal(e.GetEventBytes(), &ev))
		records = append(records, ev.GetVendorRecordId())
		if len(ids) > 0 {
			require.Greater(t, e.GetId(), ids[len(ids)-1], "entry ids of a key follow its commit order")
		}
		ids = append(ids, e.GetId())
	}
	return records, ids
}

// TestOutboxRunsAreOneRowLeasedAsEntries: a transaction's events of one
// user are one outbox row, handed out by a lease as one entry per event,
// in order, with ids of their own; acknowledging them all removes the row.
func TestOutboxRunsAreOneRowLeasedAsEntries(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	a, b := "runs-a-"+uuid.NewString(), "runs-b-"+uuid.NewString()
	wantA := writeRun(t, st, a, 10)
	wantB := writeRun(t, st, b, 1)
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM outbox WHERE key = $1 AND payload_type = 3 AND event_count = 10`, a))
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM outbox WHERE key = $1 AND payload_type = 1`, b), "one event stays a plain row")
	stats, err := st.Stats(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 11, stats.Pending, "the backlog counts events")

	l, err := st.LeaseRaw(ctx, "p1", 500, time.Minute)
	require.NoError(t, err)
	require.Len(t, l.Entries, 11)
	gotA, idsA := leased(t, l, a)
	require.Equal(t, wantA, gotA)
	gotB, _ := leased(t, l, b)
	require.Equal(t, wantB, gotB)
	var row int64
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT id FROM outbox WHERE key = $1`, a).Scan(&row))
	for i, id := range idsA {
		require.Equal(t, row+1+int64(i), id, "event i of the run in row r is entry r+1+i")
	}
	n, _, err := st.Renew(ctx, uuid.MustParse(l.Token), time.Minute)
	require.NoError(t, err)
	require.Equal(t, 11, n, "renewing counts the events held")

	// A replica of the previous release acks by row id: it never names a
	// run's row, so the run stays.
	tok := uuid.MustParse(l.Token)
	n, err = st.Ack(ctx, tok, []int64{row})
	require.NoError(t, err)
	require.Zero(t, n)
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM outbox WHERE key = $1`, a))

	ids := make([]int64, len(l.Entries))
	for i, e := range l.Entries {
		ids[i] = e.GetId()
	}
	n, err = st.Ack(ctx, tok, ids)
	require.NoError(t, err)
	require.Equal(t, 11, n)
	require.Zero(t, count(t, st, `SELECT count(*) FROM outbox`))
	requireHeadsExact(t, st)

	// Decoded leases expand runs the same way.
	writeRun(t, st, a+"-again", 3)
	l, err = st.Lease(ctx, "p1", 500, time.Minute)
	require.NoError(t, err)
	require.Len(t, l.Entries, 3)
	for i, e := range l.Entries {
		require.Equal(t, fmt.Sprintf("%s-again-r%04d", a, i), e.GetEvent().GetVendorRecordId())
	}
}

// TestOutboxRunLeasedInParts: a run larger than a lease is handed out in
// parts. Acknowledging a part releases the run at once (the next lease
// takes the rest without waiting for this one to run out), and no event is
// handed out again once acknowledged.
func TestOutboxRunLeasedInParts(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	a := "parts-" + uuid.NewString()
	want := writeRun(t, st, a, 10)

	var got []string
	for _, max := range []int{4, 4, 4} {
		l, err := st.LeaseRaw(ctx, "p1", max, time.Hour)
		require.NoError(t, err)
		part, ids := leased(t, l, a)
		require.LessOrEqual(t, len(part), max)
		require.NotEmpty(t, part)
		got = append(got, part...)
		n, err := st.Ack(ctx, uuid.MustParse(l.Token), ids)
		require.NoError(t, err)
		require.Equal(t, len(ids), n)
	}
	require.Equal(t, want, got)
	require.Zero(t, count(t, st, `SELECT count(*) FROM outbox`))
	requireHeadsExact(t, st)
}

// TestOutboxRunFailureMidRun: the relay published the first events of a
// run, then one failed. The ack moves the run past what was published, the
// nack counts the failure on the event that failed, and the next lease
// starts at it: nothing published is handed out again, nothing is skipped.
func TestOutboxRunFailureMidRun(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	a := "midrun-" + uuid.NewString()
	want := writeRun(t, st, a, 8)

	l, err := st.LeaseRaw(ctx, "p1", 500, time.Hour)
	require.NoError(t, err)
	_, ids := leased(t, l, a)
	require.Len(t, ids, 8)
	tok := uuid.MustParse(l.Token)
	n, err := st.Ack(ctx, tok, ids[:3])
	require.NoError(t, err)
	require.Equal(t, 3, n)
	n, err = st.Nack(ctx, tok, ids[3:], "broker said no", 0, true)
	require.NoError(t, err)
	require.Equal(t, 5, n)
	stats, err := st.Stats(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 5, stats.Pending)

	l2, err := st.LeaseRaw(ctx, "p2", 500, time.Hour)
	require.NoError(t, err)
	got, ids2 := leased(t, l2, a)
	require.Equal(t, want[3:], got)
	require.Equal(t, ids[3:], ids2, "the remaining events keep their entry ids")
	require.EqualValues(t, 1, l2.Entries[0].GetAttempts(), "the failed event's attempt is counted")
	require.Equal(t, "broker said no", l2.Entries[0].GetLastError())
	for _, e := range l2.Entries[1:] {
		require.Zero(t, e.GetAttempts(), "later events were never sent")
	}

	// The first lease's token no longer acknowledges anything.
	n, err = st.Ack(ctx, tok, ids2)
	require.NoError(t, err)
	require.Zero(t, n)
	n, err = st.Ack(ctx, uuid.MustParse(l2.Token), ids2)
	require.NoError(t, err)
	require.Equal(t, 5, n)
	require.Zero(t, count(t, st, `SELECT count(*) FROM outbox`))
}

// TestOutboxRunsAreBounded: a write larger than a run's limit takes
// several runs, in order, whose entry ids do not collide.
func TestOutboxRunsAreBounded(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	a := "bounded-" + uuid.NewString()
	want := writeRun(t, st, a, store.RunIDStride+100)
	require.Equal(t, []string{fmt.Sprintf("[%d]", store.RunIDStride-1), "[101]"}, dump(t, st, `SELECT event_count FROM outbox ORDER BY id`))
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM (SELECT id - lag(id) OVER (ORDER BY id) AS gap FROM outbox) g WHERE gap >= $1`, store.RunIDStride))

	var got []string
	for len(got) < len(want) {
		l, err := st.LeaseRaw(ctx, "p1", 5000, time.Hour)
		require.NoError(t, err)
		require.NotEmpty(t, l.Entries)
		part, ids := leased(t, l, a)
		got = append(got, part...)
		_, err = st.Ack(ctx, uuid.MustParse(l.Token), ids)
		require.NoError(t, err)
	}
	require.Equal(t, want, got)
}

// TestOutboxRunsFollowTraceparents: ops of different requests merged into
// one transaction keep their own traceparent, so a user's events split
// into runs where the traceparent changes, still in order.
func TestOutboxRunsFollowTraceparents(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	a := "trace-" + uuid.NewString()
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	var ops []store.Op
	var want []string
	for i, tp := range []string{"tp-1", "tp-1", "tp-2", "tp-1", "tp-1"} {
		id := fmt.Sprintf("%s-%d", a, i)
		op := upsert(t, a, id, "recovery_score", 50, at.Add(time.Duration(i)*time.Second))
		op.TraceParent = tp
		ops = append(ops, op)
		want = append(want, id)
	}
	_, _, err := st.Apply(ctx, ops)
	require.NoError(t, err)
	require.Equal(t, []string{"[tp-1 2]", "[tp-2 1]", "[tp-1 2]"}, dump(t, st, `SELECT traceparent, event_count FROM outbox ORDER BY id`))
	l, err := st.LeaseRaw(ctx, "p1", 500, time.Hour)
	require.NoError(t, err)
	got, _ := leased(t, l, a)
	require.Equal(t, want, got)
	for i, e := range l.Entries {
		require.Equal(t, ops[i].TraceParent, e.GetTraceparent())
	}
}
