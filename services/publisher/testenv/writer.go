package testenv

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
)

// Writer writes events through the persistence service's WriteEvents, the
// way ingest does, numbering each user's records so CheckOrder can verify
// per-user order on the topic. Each user's events are written in sequence
// (one call commits before the next), so write order is commit order.
type Writer struct {
	rpc persistencev1.PersistenceServiceClient

	mu  sync.Mutex
	seq map[string]int
	// Committed maps event id to the time its WriteEvents call returned.
	committed map[string]time.Time
}

// NewWriter returns a writer over conn, which carries the service token.
func NewWriter(conn grpc.ClientConnInterface) *Writer {
	return &Writer{
		rpc:       persistencev1.NewPersistenceServiceClient(conn),
		seq:       map[string]int{},
		committed: map[string]time.Time{},
	}
}

// Users returns n user ids with the given prefix.
func Users(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-user-%04d", prefix, i)
	}
	return out
}

// Event returns the next event of user with the given number of readings.
func (w *Writer) Event(user string, readings int) *persistencev1.EventInput {
	w.mu.Lock()
	w.seq[user]++
	n := w.seq[user]
	w.mu.Unlock()
	at := time.Now().Add(-time.Hour).Add(time.Duration(n) * time.Second).UTC()
	in := &persistencev1.EventInput{
		UserId:         user,
		Source:         biometricsv1.Source_SOURCE_INTERNAL,
		Kind:           "sample",
		VendorRecordId: RecordID(user, n),
		OccurredAt:     timestamppb.New(at),
	}
	for i := range readings {
		in.Readings = append(in.Readings, &biometricsv1.Reading{
			Metric:     "heart_rate_bpm",
			Value:      float64(50 + (n+i)%100),
			ObservedAt: timestamppb.New(at.Add(-time.Duration(i) * time.Millisecond)),
		})
	}
	return in
}

// Write stores events in one WriteEvents call and fails unless every one
// was inserted. It returns the event ids in order.
func (w *Writer) Write(ctx context.Context, events []*persistencev1.EventInput) ([]string, error) {
	resp, err := w.rpc.WriteEvents(ctx, &persistencev1.WriteEventsRequest{Events: events})
	if err != nil {
		return nil, fmt.Errorf("write events: %w", err)
	}
	now := time.Now()
	ids := make([]string, len(resp.GetResults()))
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, r := range resp.GetResults() {
		if r.GetStatus() != persistencev1.WriteStatus_WRITE_STATUS_INSERTED {
			return nil, fmt.Errorf("event %d: status %s reason %q", i, r.GetStatus(), r.GetReason())
		}
		ids[i] = r.GetEventId()
		w.committed[r.GetEventId()] = now
	}
	return ids, nil
}

// WriteRound writes one event (with one reading) for every user, in
// batches of at most batch events per call.
func (w *Writer) WriteRound(ctx context.Context, users []string, batch int) error {
	for start := 0; start < len(users); start += batch {
		end := min(start+batch, len(users))
		events := make([]*persistencev1.EventInput, 0, end-start)
		for _, u := range users[start:end] {
			events = append(events, w.Event(u, 1))
		}
		if _, err := w.Write(ctx, events); err != nil {
			return err
		}
	}
	return nil
}

// Written returns how many events were written per user: every event
// Event numbered, so a write that failed or was abandoned still counts. A
// caller comparing it with what arrived must let every write finish.
func (w *Writer) Written() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]int, len(w.seq))
	for k, v := range w.seq {
		out[k] = v
	}
	return out
}

// CommittedAt returns when the write of event id returned.
func (w *Writer) CommittedAt(id string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.committed[id]
	return t, ok
}
