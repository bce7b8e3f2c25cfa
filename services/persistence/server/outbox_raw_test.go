package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
)

// TestLeaseRawPayload: with raw_payload, LeaseOutbox hands out each
// payload as stored, untouched; without it, decoded as before. The stored
// bytes are exactly proto.Marshal of the decoded payload (what a publisher
// that re-encodes it publishes), for every kind of entry persistence
// writes: upserts (with and without device, start time, occurrence time),
// deletions, connection events and the erasure's user_erased event.
func TestLeaseRawPayload(t *testing.T) {
	t.Parallel()
	e := start(t)
	user, erased := newUser(), newUser()
	at := time.Date(2026, 11, 20, 8, 0, 0, 123456789, time.UTC)
	withDevice := reading("heart_rate_bpm", 61.5, at)
	withDevice.StartTime = ts(at.Add(-time.Minute))
	withDevice.Device = &biometricsv1.Device{Name: "Watch é", Model: "W1", BundleId: "com.example"}
	occurred := event(user, "a", withDevice, reading("steps", 12, at))
	occurred.OccurredAt = ts(at)
	e.write(occurred)
	e.write(event(user, "b", reading("heart_rate_bpm", 62, at.Add(time.Minute))))
	_, err := e.persistence.DeleteRecords(e.ingestCtx(), delRequest(user, "b"))
	require.NoError(t, err)
	_, err = e.persistence.AppendConnectionEvents(e.ingestCtx(), &persistencev1.AppendConnectionEventsRequest{
		Events: []*biometricsv1.ConnectionEvent{{UserId: user, Vendor: "oura", Reason: "invalid_grant",
			Type: biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_REFRESH_FAILED, OccurredAt: ts(at)}},
	})
	require.NoError(t, err)
	e.write(event(erased, "c", reading("heart_rate_bpm", 60, at)))
	_, err = e.persistence.DeleteUserData(e.ingestCtx(), &persistencev1.DeleteUserDataRequest{UserId: erased})
	require.NoError(t, err)

	raw, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "new", RawPayload: true})
	require.NoError(t, err)
	require.Len(t, raw.GetEntries(), 5) // a, b, b's deletion, the connection event, user_erased
	stored := map[int64][]byte{}
	for _, en := range raw.GetEntries() {
		var b []byte
		require.NoError(t, e.db.QueryRow(context.Background(), `SELECT payload FROM outbox WHERE id = $1`, en.GetId()).Scan(&b))
		switch p := en.GetPayload().(type) {
		case *persistencev1.OutboxEntry_EventBytes:
			require.Equal(t, b, p.EventBytes, "entry %d", en.GetId())
		case *persistencev1.OutboxEntry_ConnectionEventBytes:
			require.Equal(t, b, p.ConnectionEventBytes, "entry %d", en.GetId())
		default:
			t.Fatalf("entry %d: payload %T, want the stored bytes", en.GetId(), p)
		}
		stored[en.GetId()] = b
	}
	ids := make([]int64, 0, len(stored))
	for id := range stored {
		ids = append(ids, id)
	}
	_, err = e.persistence.NackOutbox(e.ingestCtx(), &persistencev1.NackOutboxRequest{
		LeaseToken: raw.GetLeaseToken(), Ids: ids, Error: "give back", RetryAfter: durationpb.New(0)})
	require.NoError(t, err)

	// An old publisher's lease: decoded, and re-encoding gives the stored bytes.
	decoded, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "old"})
	require.NoError(t, err)
	require.Len(t, decoded.GetEntries(), len(stored))
	kinds := map[string]int{}
	for _, en := range decoded.GetEntries() {
		var m proto.Message
		switch p := en.GetPayload().(type) {
		case *persistencev1.OutboxEntry_Event:
			m = p.Event
			kinds[p.Event.GetOperation().String()]++
		case *persistencev1.OutboxEntry_ConnectionEvent:
			m = p.ConnectionEvent
			kinds[p.ConnectionEvent.GetType().String()]++
		default:
			t.Fatalf("entry %d: payload %T, want it decoded", en.GetId(), p)
		}
		b, err := proto.Marshal(m)
		require.NoError(t, err)
		require.Equal(t, stored[en.GetId()], b, "entry %d", en.GetId())
	}
	require.Equal(t, map[string]int{"OPERATION_UPSERT": 2, "OPERATION_DELETE": 1,
		"CONNECTION_EVENT_TYPE_REFRESH_FAILED": 1, "CONNECTION_EVENT_TYPE_USER_ERASED": 1}, kinds)
}
