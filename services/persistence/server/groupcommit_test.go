package server_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/persistence/server"
)

// TestGroupCommitMergesConcurrentWrites: 64 concurrent single-event calls
// share transactions, and every caller still gets its own result.
func TestGroupCommitMergesConcurrentWrites(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *server.Config) {
		c.GroupCommitWindow = 50 * time.Millisecond
		c.GroupCommitConcurrency = 1
	})
	at := time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC)
	users := make([]string, 64)
	for i := range users {
		users[i] = newUser()
	}
	var wg sync.WaitGroup
	ids := make([]string, len(users))
	for i, u := range users {
		wg.Go(func() {
			// The same record id for everyone: identities are per user, so
			// each caller inserts its own record.
			resp, err := e.persistence.WriteEvents(e.ingestCtx(), &persistencev1.WriteEventsRequest{Events: []*persistencev1.EventInput{
				event(u, "rec", reading("heart_rate_bpm", float64(40+i), at)),
			}})
			if noErr(t, err) && len(resp.GetResults()) == 1 {
				if resp.GetResults()[0].GetStatus() != persistencev1.WriteStatus_WRITE_STATUS_INSERTED {
					t.Errorf("caller %d: %s", i, resp.GetResults()[0].GetStatus())
				}
				ids[i] = resp.GetResults()[0].GetEventId()
			}
		})
	}
	wg.Wait()
	for i, u := range users {
		var id string
		require.NoError(t, e.db.QueryRow(context.Background(), `SELECT event_id::text FROM records WHERE user_id = $1`, u).Scan(&id))
		require.Equal(t, id, ids[i], "caller %d got its own event id", i)
		require.Equal(t, float64(40+i), e.latest(u)["heart_rate_bpm"].GetValue())
	}
	txs := counter(t, e.srv.Registry(), "biobridge_persistence_tx_events")
	require.Less(t, txs, 64.0, "calls shared transactions")
	t.Logf("64 calls in %.0f transactions", txs)
}

// TestGroupCommitIsolatesAFailingCall: a call whose event breaks the
// shared transaction fails alone; the others' events are stored.
func TestGroupCommitIsolatesAFailingCall(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *server.Config) {
		c.GroupCommitWindow = 100 * time.Millisecond
		c.GroupCommitConcurrency = 1
	})
	// A database-side failure no validation can foresee.
	_, err := e.db.Exec(context.Background(), `
		CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
		  IF NEW.vendor_record_id = 'poison' THEN RAISE EXCEPTION 'poisoned record'; END IF;
		  RETURN NEW;
		END $$;
		CREATE TRIGGER poison BEFORE INSERT ON records FOR EACH ROW EXECUTE FUNCTION poison();`)
	require.NoError(t, err)

	at := time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	errs := make([]error, 10)
	users := make([]string, 10)
	for i := range users {
		users[i] = newUser()
		wg.Go(func() {
			id := fmt.Sprintf("ok-%d", i)
			if i == 3 {
				id = "poison"
			}
			_, errs[i] = e.persistence.WriteEvents(e.ingestCtx(), &persistencev1.WriteEventsRequest{Events: []*persistencev1.EventInput{
				event(users[i], id, reading("heart_rate_bpm", 60, at)),
			}})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i == 3 {
			require.Equal(t, codes.Unavailable, status.Code(err))
			require.Zero(t, e.count(`SELECT count(*) FROM events WHERE user_id = $1`, users[i]))
			continue
		}
		require.NoError(t, err, "caller %d", i)
		require.Equal(t, 1, e.count(`SELECT count(*) FROM records WHERE user_id = $1`, users[i]))
	}
	require.Positive(t, counter(t, e.srv.Registry(), "biobridge_persistence_group_commit_isolations_total"))
	require.Len(t, e.drainOutbox(), 9)
}

// TestDuplicateAndReplayedBatches: replays (sequential and concurrent)
// add no rows and no outbox entries; one changed event adds exactly one
// version.
func TestDuplicateAndReplayedBatches(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	batch := func(changed int) []*persistencev1.EventInput {
		var evs []*persistencev1.EventInput
		for i := range 50 {
			v := 60.0
			if i == changed {
				v = 61
			}
			ev := event(user, fmt.Sprintf("sleep-%d", i),
				reading("sleep_score", v, at.Add(time.Duration(i)*24*time.Hour)),
				reading("deep_sleep_s", 3600, at.Add(time.Duration(i)*24*time.Hour)))
			ev.OccurredAt = ts(time.Now()) // vendors bump this on redelivery
			evs = append(evs, ev)
		}
		return evs
	}
	e.write(batch(-1)...)
	counts := func() [4]int {
		return [4]int{
			e.count(`SELECT count(*) FROM events WHERE user_id = $1`, user),
			e.count(`SELECT count(*) FROM readings WHERE user_id = $1`, user),
			e.count(`SELECT coalesce(sum(event_count), 0) FROM outbox WHERE key = $1`, user), // events (a write's events of a user are one run)
			e.count(`SELECT count(*) FROM records WHERE user_id = $1`, user),
		}
	}
	before := counts()
	require.Equal(t, [4]int{50, 100, 50, 50}, before)

	// Replayed five times, three of them at once.
	for range 2 {
		for _, r := range e.write(batch(-1)...) {
			require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE, r.GetStatus())
		}
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			resp, err := e.persistence.WriteEvents(e.ingestCtx(), &persistencev1.WriteEventsRequest{Events: batch(-1)})
			if noErr(t, err) {
				for _, r := range resp.GetResults() {
					if r.GetStatus() != persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE {
						t.Errorf("replay: %s", r.GetStatus())
					}
				}
			}
		})
	}
	wg.Wait()
	require.Equal(t, before, counts())

	// One changed record among 50 duplicates.
	res := e.write(batch(7)...)
	for i, r := range res {
		if i == 7 {
			require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, r.GetStatus())
			require.EqualValues(t, 2, r.GetVersion())
		} else {
			require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE, r.GetStatus())
		}
	}
	require.Equal(t, [4]int{51, 100, 51, 50}, counts())

	// Two versions of one record in one batch: both are versions, in order.
	res = e.write(batch(8)[8], batch(-1)[8], batch(-1)[8])
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, res[0].GetStatus())
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, res[1].GetStatus())
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE, res[2].GetStatus())
	require.EqualValues(t, 3, res[1].GetVersion())
	require.Equal(t, res[1].GetEventId(), res[2].GetEventId())
	require.Equal(t, [4]int{53, 100, 53, 50}, counts())
}

// TestInvalidInputIsRejectedAndChangesNothing covers the per-reading and
// per-event rejections.
func TestInvalidInputIsRejectedAndChangesNothing(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	noTime := reading("heart_rate_bpm", 60, at)
	noTime.ObservedAt = nil
	res := e.write(
		event(user, "mixed", reading("heart_rate_bpm", 60, at), reading("mood", 3, at), reading("spo2_pct", 140, at), noTime),
		event(user, "all-bad", reading("heart_rate_bpm", 9999, at)),
		event("", "no-user", reading("heart_rate_bpm", 60, at)),
		&persistencev1.EventInput{UserId: user, VendorRecordId: "no-source", Readings: []*biometricsv1.Reading{reading("heart_rate_bpm", 60, at)}},
	)
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_INSERTED, res[0].GetStatus())
	var reasons []string
	for _, r := range res[0].GetRejectedReadings() {
		reasons = append(reasons, fmt.Sprintf("%d:%s", r.GetIndex(), r.GetReason()))
	}
	require.Equal(t, []string{"1:unknown_metric", "2:out_of_range", "3:missing_time"}, reasons)
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_REJECTED, res[1].GetStatus())
	require.Equal(t, "no_valid_readings", res[1].GetReason())
	require.Equal(t, "invalid_event", res[2].GetReason())
	require.Equal(t, "invalid_event", res[3].GetReason())
	require.Equal(t, 1, e.count(`SELECT count(*) FROM readings WHERE user_id = $1`, user))
	require.Equal(t, 1, e.count(`SELECT count(*) FROM outbox`))
	require.Equal(t, 1.0, counter(t, e.srv.Registry(), "biobridge_persistence_rejections_total", "level", "reading", "reason", "unknown_metric"))
	require.Equal(t, 1.0, counter(t, e.srv.Registry(), "biobridge_persistence_reading_value", "metric", "heart_rate_bpm", "source", "healthkit"))

	// Too many events is refused as a whole.
	big := make([]*persistencev1.EventInput, 10_001)
	for i := range big {
		big[i] = event(user, "x", reading("heart_rate_bpm", 60, at))
	}
	_, err := e.persistence.WriteEvents(e.ingestCtx(), &persistencev1.WriteEventsRequest{Events: big})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
}
