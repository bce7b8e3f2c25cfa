package server_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/topics"
)

func TestOutboxLeaseAckNack(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	e.write(event(user, "a", reading("heart_rate_bpm", 61, at)))
	e.write(event(user, "b", reading("heart_rate_bpm", 62, at.Add(time.Minute))))
	conn := &persistencev1.AppendConnectionEventsRequest{
		Events: []*biometricsv1.ConnectionEvent{{UserId: user, Vendor: "whoop", Type: biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_CONNECTED}},
	}
	appended, err := e.persistence.AppendConnectionEvents(e.ingestCtx(), conn)
	require.NoError(t, err)
	require.Len(t, appended.GetEventIds(), 1)
	// Re-appending with the assigned id (a retry) adds nothing.
	conn.Events[0].EventId = appended.GetEventIds()[0]
	again, err := e.persistence.AppendConnectionEvents(e.ingestCtx(), conn)
	require.NoError(t, err)
	require.Equal(t, appended.GetEventIds(), again.GetEventIds())
	require.Equal(t, 1, e.count(`SELECT count(*) FROM outbox WHERE topic = $1`, topics.Connections))

	resp, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "p1"})
	require.NoError(t, err)
	require.Len(t, resp.GetEntries(), 3)
	require.Equal(t, "a", resp.GetEntries()[0].GetEvent().GetVendorRecordId())
	require.Equal(t, "b", resp.GetEntries()[1].GetEvent().GetVendorRecordId())
	require.Equal(t, topics.Connections, resp.GetEntries()[2].GetTopic())
	require.Equal(t, appended.GetEventIds()[0], resp.GetEntries()[2].GetConnectionEvent().GetEventId())
	require.Equal(t, user, resp.GetEntries()[2].GetKey())

	// Nothing else is leasable while the lease holds.
	other, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "p2"})
	require.NoError(t, err)
	require.Empty(t, other.GetEntries())

	ids := []int64{resp.GetEntries()[0].GetId()}
	ack, err := e.persistence.AckOutbox(e.ingestCtx(), &persistencev1.AckOutboxRequest{LeaseToken: resp.GetLeaseToken(), Ids: ids})
	require.NoError(t, err)
	require.EqualValues(t, 1, ack.GetAcked())

	nack, err := e.persistence.NackOutbox(e.ingestCtx(), &persistencev1.NackOutboxRequest{
		LeaseToken: resp.GetLeaseToken(), Ids: []int64{resp.GetEntries()[1].GetId()}, Error: "broker down", RetryAfter: durationpb.New(0), Attempted: true})
	require.NoError(t, err)
	require.EqualValues(t, 1, nack.GetReleased())

	relet, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "p2"})
	require.NoError(t, err)
	require.Len(t, relet.GetEntries(), 2, "the nacked entry and the one after it (released with it)")
	require.Equal(t, "broker down", relet.GetEntries()[0].GetLastError())
	require.EqualValues(t, 1, relet.GetEntries()[0].GetAttempts(), "one failed send")
	require.Zero(t, relet.GetEntries()[1].GetAttempts(), "released with it, never sent")
}
