// Package api implements the persistence service's gRPC APIs:
// PersistenceService (writes and the outbox, for ingest and the publisher)
// and BiometricsService (audited reads, for agents and internal callers).
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/groupcommit"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/pkg/truncate"
	"github.com/biobridge/bridge/services/persistence/internal/latestcache"
	"github.com/biobridge/bridge/services/persistence/internal/metrics"
	"github.com/biobridge/bridge/services/persistence/internal/record"
	"github.com/biobridge/bridge/services/persistence/internal/store"
)

// Request limits (the proto documents them).
const (
	MaxEventsPerWrite    = 10_000
	MaxDeletesPerCall    = 10_000
	MaxConnectionEvents  = 1_000
	DefaultLeaseEntries  = 500
	MaxLeaseEntries      = 5_000
	DefaultLeaseDuration = 30 * time.Second
	MinLeaseDuration     = time.Second
	MaxLeaseDuration     = time.Hour
	MaxLeaseWait         = time.Minute
	MaxRetryAfter        = time.Hour
	maxErrorLen          = 1000
)

// Persistence implements PersistenceService.
type Persistence struct {
	persistencev1.UnimplementedPersistenceServiceServer

	store     *store.Store
	committer *groupcommit.Committer[store.Op, store.OpResult]
	notifier  *store.Notifier
	latest    *latestcache.Latest
	m         *metrics.Metrics
	logger    *slog.Logger
	// stopping ends long polls when the server shuts down.
	stopping <-chan struct{}
	// pollInterval bounds a long poll's sleep between checks when no
	// notification comes (expired leases, retry delays, a lost LISTEN
	// connection).
	pollInterval time.Duration
}

// NewPersistence returns the PersistenceService implementation.
func NewPersistence(st *store.Store, c *groupcommit.Committer[store.Op, store.OpResult], n *store.Notifier, m *metrics.Metrics,
	logger *slog.Logger, stopping <-chan struct{}, pollInterval time.Duration) *Persistence {
	if pollInterval <= 0 {
		pollInterval = time.Second
	}
	return &Persistence{store: st, committer: c, notifier: n, m: m, logger: logger, stopping: stopping, pollInterval: pollInterval}
}

// WriteEvents validates and stores a batch of record versions.
func (p *Persistence) WriteEvents(ctx context.Context, req *persistencev1.WriteEventsRequest) (*persistencev1.WriteEventsResponse, error) {
	if n := len(req.GetEvents()); n > MaxEventsPerWrite {
		return nil, apperr.E(apperr.TooLarge, "too_many_events", fmt.Sprintf("at most %d events per call, got %d", MaxEventsPerWrite, n))
	}
	results := make([]*persistencev1.WriteResult, len(req.GetEvents()))
	ops := make([]store.Op, 0, len(req.GetEvents()))
	opIndex := make([]int, 0, len(req.GetEvents()))
	tp := telemetry.TraceParent(ctx)
	events := make([]record.Event, len(req.GetEvents()))
	for i, in := range req.GetEvents() {
		ev, rejected, reason, msg := record.Normalize(in)
		res := &persistencev1.WriteResult{Index: int32(i)}
		for _, r := range rejected {
			res.RejectedReadings = append(res.RejectedReadings, &persistencev1.ReadingRejection{
				Index: int32(r.Index), Metric: truncate.UTF8(r.Metric, 128), Reason: r.Reason, Message: r.Message,
			})
			p.m.Rejections.WithLabelValues("reading", r.Reason).Inc()
		}
		results[i] = res
		if reason != "" {
			res.Status = persistencev1.WriteStatus_WRITE_STATUS_REJECTED
			res.Reason = reason
			p.m.Rejections.WithLabelValues("event", reason).Inc()
			p.m.EventsWritten.WithLabelValues("rejected").Inc()
			p.logger.DebugContext(ctx, "event rejected", "index", i, "reason", reason, "detail", msg)
			continue
		}
		events[i] = ev
		ops = append(ops, store.Op{Upsert: &events[i], TraceParent: tp})
		opIndex = append(opIndex, i)
	}
	if len(ops) > 0 {
		out, err := p.committer.Do(ctx, ops)
		if err != nil {
			return nil, writeError(err)
		}
		for j, r := range out {
			res := results[opIndex[j]]
			res.Status, res.EventId, res.Version = r.Status, r.EventID, r.Version
			if r.Status == persistencev1.WriteStatus_WRITE_STATUS_REJECTED {
				// stale_version or record_deleted (see store.Reason*).
				res.Reason = r.Reason
				p.m.Rejections.WithLabelValues("event", r.Reason).Inc()
			}
			p.m.EventsWritten.WithLabelValues(statusLabel(r.Status)).Inc()
		}
	}
	return &persistencev1.WriteEventsResponse{Results: results}, nil
}

func statusLabel(s persistencev1.WriteStatus) string {
	switch s {
	case persistencev1.WriteStatus_WRITE_STATUS_INSERTED:
		return "inserted"
	case persistencev1.WriteStatus_WRITE_STATUS_UPDATED:
		return "updated"
	case persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE:
		return "duplicate"
	case persistencev1.WriteStatus_WRITE_STATUS_REJECTED:
		return "rejected"
	}
	return "unspecified"
}

// writeError maps a failed write: the client may retry (writes are
// idempotent), so database trouble is Unavailable, not Internal.
func writeError(err error) error {
	switch {
	case errors.Is(err, groupcommit.ErrClosed):
		return apperr.Wrap(err, apperr.Unavailable, "shutting_down", "server is shutting down, retry")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "could not store the events, retry")
}

// DeleteRecords tombstones records and enqueues DELETE events.
func (p *Persistence) DeleteRecords(ctx context.Context, req *persistencev1.DeleteRecordsRequest) (*persistencev1.DeleteRecordsResponse, error) {
	if n := len(req.GetRecords()); n > MaxDeletesPerCall {
		return nil, apperr.E(apperr.TooLarge, "too_many_records", fmt.Sprintf("at most %d records per call, got %d", MaxDeletesPerCall, n))
	}
	ops := make([]store.Op, len(req.GetRecords()))
	tp := telemetry.TraceParent(ctx)
	for i, ref := range req.GetRecords() {
		k := record.Key{UserID: ref.GetUserId(), Source: ref.GetSource(), VendorRecordID: ref.GetVendorRecordId()}
		if msg := record.ValidateKey(k); msg != "" {
			return nil, apperr.E(apperr.Invalid, "invalid_record", fmt.Sprintf("records[%d]: %s", i, msg))
		}
		d := &store.Delete{Key: k}
		if ts := ref.GetDeletedAt(); ts != nil {
			if ts.CheckValid() != nil {
				return nil, apperr.E(apperr.Invalid, "invalid_record", fmt.Sprintf("records[%d]: deleted_at is not a valid timestamp", i))
			}
			d.DeletedAt = ts.AsTime()
		}
		ops[i] = store.Op{Delete: d, TraceParent: tp}
	}
	resp := &persistencev1.DeleteRecordsResponse{Results: make([]*persistencev1.DeleteResult, len(ops))}
	if len(ops) == 0 {
		return resp, nil
	}
	out, err := p.committer.Do(ctx, ops)
	if err != nil {
		return nil, writeError(err)
	}
	for i, r := range out {
		res := &persistencev1.DeleteResult{Index: int32(i), Status: r.DeleteStatus}
		if r.DeleteStatus == persistencev1.DeleteStatus_DELETE_STATUS_DELETED {
			res.EventId = r.EventID
		}
		resp.Results[i] = res
		p.m.EventsWritten.WithLabelValues(deleteLabel(r.DeleteStatus)).Inc()
	}
	return resp, nil
}

func deleteLabel(s persistencev1.DeleteStatus) string {
	switch s {
	case persistencev1.DeleteStatus_DELETE_STATUS_DELETED:
		return "deleted"
	case persistencev1.DeleteStatus_DELETE_STATUS_ALREADY_DELETED:
		return "already_deleted"
	case persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND:
		return "not_found"
	}
	return "unspecified"
}

// AppendConnectionEvents enqueues connection lifecycle events.
func (p *Persistence) AppendConnectionEvents(ctx context.Context, req *persistencev1.AppendConnectionEventsRequest) (*persistencev1.AppendConnectionEventsResponse, error) {
	if n := len(req.GetEvents()); n > MaxConnectionEvents {
		return nil, apperr.E(apperr.TooLarge, "too_many_events", fmt.Sprintf("at most %d events per call, got %d", MaxConnectionEvents, n))
	}
	if len(req.GetEvents()) == 0 {
		return &persistencev1.AppendConnectionEventsResponse{}, nil
	}
	tp := telemetry.TraceParent(ctx)
	events := make([]store.ConnectionEvent, len(req.GetEvents()))
	for i, ev := range req.GetEvents() {
		if msg := validateConnectionEvent(ev); msg != "" {
			return nil, apperr.E(apperr.Invalid, "invalid_event", fmt.Sprintf("events[%d]: %s", i, msg))
		}
		events[i] = store.ConnectionEvent{Event: ev, TraceParent: tp}
	}
	ids, err := p.store.AppendConnectionEvents(ctx, events)
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "could not store the events, retry")
	}
	return &persistencev1.AppendConnectionEventsResponse{EventIds: ids}, nil
}

func validateConnectionEvent(ev *biometricsv1.ConnectionEvent) string {
	if msg := record.ValidateUserID(ev.GetUserId()); msg != "" {
		return msg
	}
	switch {
	case ev.GetVendor() == "" || len(ev.GetVendor()) > 32:
		return "vendor is required (at most 32 bytes)"
	case ev.GetType() == biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_UNSPECIFIED:
		return "type is required"
	case len(ev.GetEventId()) > 128:
		return "event_id is too long"
	case len(ev.GetReason()) > 256:
		return "reason is too long"
	case ev.GetOccurredAt() != nil && ev.GetOccurredAt().CheckValid() != nil:
		return "occurred_at is not a valid timestamp"
	}
	if _, ok := biometricsv1.ConnectionEventType_name[int32(ev.GetType())]; !ok {
		return "unknown type"
	}
	return ""
}

// LeaseOutbox leases entries, long-polling up to wait_timeout.
func (p *Persistence) LeaseOutbox(ctx context.Context, req *persistencev1.LeaseOutboxRequest) (*persistencev1.LeaseOutboxResponse, error) {
	limit := int(req.GetMaxEntries())
	if limit <= 0 {
		limit = DefaultLeaseEntries
	}
	limit = min(limit, MaxLeaseEntries)
	d := DefaultLeaseDuration
	if req.GetLeaseDuration() != nil {
		d = min(max(req.GetLeaseDuration().AsDuration(), MinLeaseDuration), MaxLeaseDuration)
	}
	wait := min(max(req.GetWaitTimeout().AsDuration(), 0), MaxLeaseWait)
	holder := truncate.UTF8(req.GetHolder(), 128)
	if holder == "" {
		holder = auth.Caller(ctx)
	}
	deadline := time.Now().Add(wait)
	for {
		// Take the wake-up channel before looking, so a commit that lands
		// between the look and the wait still wakes us.
		wake := p.notifier.Wait()
		lease := p.store.Lease
		if req.GetRawPayload() {
			lease = p.store.LeaseRaw
		}
		l, err := lease(ctx, holder, limit, d)
		if err != nil {
			return nil, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "could not lease outbox entries, retry")
		}
		if len(l.Entries) > 0 {
			return &persistencev1.LeaseOutboxResponse{Entries: l.Entries, LeaseToken: l.Token, LeaseRemaining: durationpb.New(l.Remaining)}, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return &persistencev1.LeaseOutboxResponse{}, nil
		}
		t := time.NewTimer(min(left, p.pollInterval))
		select {
		case <-wake:
		case <-t.C:
		case <-p.stopping:
			t.Stop()
			return &persistencev1.LeaseOutboxResponse{}, nil
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		t.Stop()
	}
}

func parseLeaseToken(s string) (uuid.UUID, error) {
	id, err := uuid.Parse(s)
	if err != nil {
		return uuid.UUID{}, apperr.E(apperr.Invalid, "invalid_lease_token", "lease_token is not a token from LeaseOutbox")
	}
	return id, nil
}

// RenewOutboxLease extends a lease still held under its token.
func (p *Persistence) RenewOutboxLease(ctx context.Context, req *persistencev1.RenewOutboxLeaseRequest) (*persistencev1.RenewOutboxLeaseResponse, error) {
	token, err := parseLeaseToken(req.GetLeaseToken())
	if err != nil {
		return nil, err
	}
	d := DefaultLeaseDuration
	if req.GetLeaseDuration() != nil {
		d = min(max(req.GetLeaseDuration().AsDuration(), MinLeaseDuration), MaxLeaseDuration)
	}
	n, left, err := p.store.Renew(ctx, token, d)
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "could not renew the lease, retry")
	}
	return &persistencev1.RenewOutboxLeaseResponse{Renewed: int32(n), LeaseRemaining: durationpb.New(left)}, nil
}

// AckOutbox deletes published entries.
func (p *Persistence) AckOutbox(ctx context.Context, req *persistencev1.AckOutboxRequest) (*persistencev1.AckOutboxResponse, error) {
	token, err := parseLeaseToken(req.GetLeaseToken())
	if err != nil {
		return nil, err
	}
	if len(req.GetIds()) == 0 {
		return &persistencev1.AckOutboxResponse{}, nil
	}
	n, err := p.store.Ack(ctx, token, req.GetIds())
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "could not acknowledge, retry")
	}
	return &persistencev1.AckOutboxResponse{Acked: int32(n)}, nil
}

// NackOutbox releases entries after a failed publish.
func (p *Persistence) NackOutbox(ctx context.Context, req *persistencev1.NackOutboxRequest) (*persistencev1.NackOutboxResponse, error) {
	token, err := parseLeaseToken(req.GetLeaseToken())
	if err != nil {
		return nil, err
	}
	if len(req.GetIds()) == 0 {
		return &persistencev1.NackOutboxResponse{}, nil
	}
	retry := min(max(req.GetRetryAfter().AsDuration(), 0), MaxRetryAfter)
	n, err := p.store.Nack(ctx, token, req.GetIds(), truncate.UTF8(req.GetError(), maxErrorLen), retry, req.GetAttempted())
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "could not release, retry")
	}
	return &persistencev1.NackOutboxResponse{Released: int32(n)}, nil
}

// GetOutboxStats reports the backlog.
func (p *Persistence) GetOutboxStats(ctx context.Context, _ *persistencev1.GetOutboxStatsRequest) (*persistencev1.GetOutboxStatsResponse, error) {
	st, err := p.store.Stats(ctx)
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "could not read outbox stats, retry")
	}
	resp := &persistencev1.GetOutboxStatsResponse{Pending: st.Pending, Leased: st.Leased}
	if !st.OldestPending.IsZero() {
		resp.OldestPendingAt = timestamppb.New(st.OldestPending)
	}
	return resp, nil
}
