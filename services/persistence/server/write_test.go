package server_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
)

func TestWriteEventsInsertDuplicateUpdate(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)

	first := e.write(event(user, "rec-1", reading("heart_rate_bpm", 61, at), reading("hrv_sdnn_ms", 40, at)))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_INSERTED, first[0].GetStatus())
	require.EqualValues(t, 1, first[0].GetVersion())

	// Identical content (readings in another order) is a duplicate.
	dup := e.write(event(user, "rec-1", reading("hrv_sdnn_ms", 40, at), reading("heart_rate_bpm", 61, at)))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE, dup[0].GetStatus())
	require.Equal(t, first[0].GetEventId(), dup[0].GetEventId())

	changed := e.write(event(user, "rec-1", reading("heart_rate_bpm", 62, at)))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, changed[0].GetStatus())
	require.EqualValues(t, 2, changed[0].GetVersion())

	require.Equal(t, 2, e.count(`SELECT count(*) FROM events WHERE user_id = $1`, user))
	require.Equal(t, 1, e.count(`SELECT count(*) FROM readings WHERE user_id = $1`, user))
	require.Equal(t, 2, e.count(`SELECT count(*) FROM outbox WHERE key = $1`, user))

	// Each reading carries its event (provenance): the current version's.
	require.Equal(t, 1, e.count(`SELECT count(*) FROM readings WHERE user_id = $1 AND event_id = $2::uuid`, user, changed[0].GetEventId()))

	l := e.latest(user)
	require.Len(t, l, 1, "the old version's hrv reading no longer counts")
	require.Equal(t, 62.0, l["heart_rate_bpm"].GetValue())
	require.Equal(t, "bpm", l["heart_rate_bpm"].GetUnit())
}
