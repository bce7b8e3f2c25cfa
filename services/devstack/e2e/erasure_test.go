package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
)

// userEvents returns user's connection events in Kafka order.
func (c *connectionEvents) userEvents(user string) []*biometricsv1.ConnectionEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*biometricsv1.ConnectionEvent
	for _, e := range c.events {
		if e.GetUserId() == user {
			out = append(out, e)
		}
	}
	return out
}

// mentions lists every column of the services' schemas (found through
// information_schema, so new tables are covered) whose rows mention needle.
func (w *world) mentions(needle string) []string {
	t := w.t
	t.Helper()
	ctx := context.Background()
	rows, err := w.db.Query(ctx, `
		SELECT c.table_schema, c.table_name, c.column_name, c.data_type FROM information_schema.columns c
		JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
		WHERE c.table_schema IN ('biometrics', 'tokens', 'ingest') AND t.table_type = 'BASE TABLE'
		  AND c.data_type IN ('text', 'character varying', 'jsonb', 'json', 'ARRAY', 'bytea')`)
	require.NoError(t, err)
	var cols [][4]string
	for rows.Next() {
		var c [4]string
		require.NoError(t, rows.Scan(&c[0], &c[1], &c[2], &c[3]))
		cols = append(cols, c)
	}
	require.NoError(t, rows.Err())
	var out []string
	for _, c := range cols {
		cond := fmt.Sprintf(`%q::text LIKE '%%' || $1 || '%%'`, c[2])
		if c[3] == "bytea" {
			cond = fmt.Sprintf(`position(convert_to($1, 'UTF8') in %q) > 0`, c[2])
		}
		var n int
		require.NoError(t, w.db.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %q.%q WHERE %s`, c[0], c[1], cond), needle).Scan(&n))
		if n > 0 {
			out = append(out, fmt.Sprintf("%s.%s.%s: %d", c[0], c[1], c[2], n))
		}
	}
	return out
}

// A user with WHOOP and Oura connections (backfilled) is erased through
// the REST route. On biometrics.connections.v1 the user's events carry
// increasing sequences (each backfill_completed after its connected), the
// last of them is user_erased, and once the publisher has sent it nothing
// about the user is left in any schema.
func TestEraseUserReachesKafka(t *testing.T) {
	w := startWorld(t, map[string]string{
		"INGEST_BACKFILL_DAYS":            "2",
		"INGEST_CONNECTION_SYNC_INTERVAL": "200ms",
		"INGEST_RECONCILE_INTERVAL":       "0",
	}, emulator.Config{Seed: 11})
	events := w.consumeConnectionEvents()
	ctx := context.Background()
	emu := w.s.Emulator
	_, err := emu.AddUser(emulator.UserSpec{Name: "eve"})
	require.NoError(t, err)
	_, err = emu.GenerateHistory(ctx, emulator.HistorySpec{User: "eve", Days: 2})
	require.NoError(t, err)
	const user = "user-kafka-erase"
	w.connect(user, "whoop", "eve")
	w.connect(user, "oura", "eve")
	require.Eventually(t, func() bool { return w.backfillsCompleted(user) == 2 }, 60*time.Second, 100*time.Millisecond)
	require.Eventually(t, func() bool {
		n := 0
		for _, e := range events.userEvents(user) {
			if e.GetType() == biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_BACKFILL_COMPLETED {
				n++
			}
		}
		return n == 2
	}, 30*time.Second, 100*time.Millisecond, "both backfill_completed events reach Kafka")

	r := do(t, http.MethodDelete, w.s.GatewayURL()+"/v1/users/"+user, w.s.OperatorToken(), nil)
	require.Equal(t, http.StatusOK, r.Code, "%s", r.Body)

	require.Eventually(t, func() bool {
		evs := events.userEvents(user)
		return len(evs) > 0 && evs[len(evs)-1].GetType() == biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_USER_ERASED
	}, 30*time.Second, 100*time.Millisecond, "user_erased reaches Kafka")
	evs := events.userEvents(user)
	connected := map[string]int64{}
	var last int64
	for _, e := range evs {
		assert.Greater(t, e.GetSequence(), last, "sequences increase in Kafka order: %v", evs)
		last = e.GetSequence()
		switch e.GetType() {
		case biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_CONNECTED:
			connected[e.GetVendor()] = e.GetSequence()
		case biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_BACKFILL_COMPLETED:
			assert.Greater(t, e.GetSequence(), connected[e.GetVendor()], "backfill_completed follows its connected")
			assert.Positive(t, connected[e.GetVendor()])
		}
	}
	// The publisher sent and acknowledged it: nothing is left.
	require.Eventually(t, func() bool { return len(w.mentions(user)) == 0 }, 20*time.Second, 200*time.Millisecond,
		"left about the user: %v", w.mentions(user))

	// A second erasure: success, no second event.
	r = do(t, http.MethodDelete, w.s.GatewayURL()+"/v1/users/"+user, w.s.OperatorToken(), nil)
	require.Equal(t, http.StatusOK, r.Code, "%s", r.Body)
	assert.Contains(t, string(r.Body), `"already_erased":true`)
	// The erasure event is committed in the erasure's transaction, before
	// the answer: a second one would be in the outbox now.
	assert.Empty(t, w.mentions(user), "no second user_erased queued")
	erased := 0
	for _, e := range events.userEvents(user) {
		if e.GetType() == biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_USER_ERASED {
			erased++
		}
	}
	assert.Equal(t, 1, erased)
}
