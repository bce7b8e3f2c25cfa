package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/services/ingest/internal/store"
)

// KindConnectionEvent is the job kind that hands a connection lifecycle
// event ingest decided on (backfill_completed) to the token broker, whose
// connection-event outbox carries every connection event of a user, with
// one per-user sequence, to persistence and biometrics.connections.v1. One
// outbox is what keeps a backfill_completed after the connected event it
// follows and before a later revoked one; two outboxes relayed separately
// could deliver them in any order. The job row is ingest's outbox entry:
// it commits in the same transaction as the change the event reports and
// is retried until the broker confirms, and the broker records an event id
// once however often it is sent.
const KindConnectionEvent = "connection_event"

// ConnectionEvent is the payload of a KindConnectionEvent job.
type ConnectionEvent struct {
	EventID    string    `json:"event_id"`
	UserID     string    `json:"user_id"`
	Vendor     string    `json:"vendor"`
	Type       string    `json:"type"`
	Reason     string    `json:"reason,omitempty"`
	OccurredAt time.Time `json:"occurred_at"`
}

// Connection event types ingest emits.
const EventBackfillCompleted = "backfill_completed"

var eventTypes = map[string]biometricsv1.ConnectionEventType{
	EventBackfillCompleted: biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_BACKFILL_COMPLETED,
}

// ConnectionEventJob is the job carrying e (deduplicated by its event id).
func ConnectionEventJob(e ConnectionEvent) (store.NewJob, error) {
	if e.EventID == "" {
		return store.NewJob{}, fmt.Errorf("connection event without an id")
	}
	payload, err := json.Marshal(e)
	if err != nil {
		return store.NewJob{}, fmt.Errorf("encode connection event: %w", err)
	}
	return store.NewJob{Vendor: e.Vendor, Kind: KindConnectionEvent, DedupeKey: "event:" + e.EventID, Payload: payload,
		Priority: store.PriorityLive}, nil
}

// Notifier handles KindConnectionEvent jobs.
type Notifier struct {
	f *Fetcher
}

// NewNotifier builds the handler on the fetcher's persistence client.
func NewNotifier(f *Fetcher) *Notifier { return &Notifier{f: f} }

// Handle implements Handler.
func (n *Notifier) Handle(ctx context.Context, j store.Job) (string, error) {
	var e ConnectionEvent
	if err := json.Unmarshal(j.Payload, &e); err != nil {
		return "", &Permanent{Reason: "unreadable payload", Err: err}
	}
	typ, ok := eventTypes[e.Type]
	if !ok {
		return "", &Permanent{Reason: "unknown connection event type " + e.Type}
	}
	_, err := n.f.tokens.RecordConnectionEvent(ctx, &tokensv1.RecordConnectionEventRequest{
		Event: &biometricsv1.ConnectionEvent{
			EventId: e.EventID, UserId: e.UserID, Vendor: e.Vendor, Type: typ,
			OccurredAt: timestamppb.New(e.OccurredAt), Reason: e.Reason,
		},
	})
	if status.Code(err) == codes.NotFound {
		// The connection is gone (its user was erased): the event has
		// nothing left to describe.
		return OutcomeNotFound, nil
	}
	if err != nil {
		return "", grpcFailure("record connection event", err)
	}
	return "published", nil
}
