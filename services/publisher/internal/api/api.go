// Package api implements biobridge.publisher.v1.PublisherService: the relay's
// status and the dead-letter operations.
package api

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	publisherv1 "github.com/biobridge/bridge/gen/go/biobridge/publisher/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/services/publisher/internal/deadletter"
	"github.com/biobridge/bridge/services/publisher/internal/relay"
	"github.com/biobridge/bridge/services/publisher/outbox"
)

// Page sizes of ListDeadLetters, and the most selectors of one
// ReplayDeadLetters call.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
	MaxReplayIDs    = 10000
	MaxReplayRanges = 1000
)

// Service serves PublisherService.
type Service struct {
	publisherv1.UnimplementedPublisherServiceServer
	relay   *relay.Relay
	outbox  *outbox.Client
	letters *deadletter.Store
	logger  *slog.Logger
}

// New returns the service.
func New(r *relay.Relay, ob *outbox.Client, letters *deadletter.Store, logger *slog.Logger) *Service {
	return &Service{relay: r, outbox: ob, letters: letters, logger: logger}
}

// GetStatus reports the backlog (live from the outbox, or the last known
// stats when persistence does not answer), the relay's counters and the
// number of dead letters not replayed.
func (s *Service) GetStatus(ctx context.Context, _ *publisherv1.GetStatusRequest) (*publisherv1.GetStatusResponse, error) {
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	st, err := s.outbox.Stats(sctx)
	if err != nil {
		s.logger.WarnContext(ctx, "outbox stats failed, reporting the last known", "err", err)
		st = s.relay.LastStats()
	} else {
		s.relay.ObserveStats(st)
	}
	c := s.relay.Counters()
	resp := &publisherv1.GetStatusResponse{
		OutboxPending:     st.Pending,
		PublishedTotal:    c.Published,
		FailedTotal:       c.Failed,
		DeadLetteredTotal: c.DeadLettered,
		KafkaConnected:    c.Connected,
		LastError:         c.LastError,
	}
	if !st.OldestPendingAt.IsZero() {
		resp.OldestPendingAge = durationpb.New(max(0, time.Since(st.OldestPendingAt)))
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := s.letters.Pending(dctx)
	if err != nil {
		s.logger.WarnContext(ctx, "count dead letters failed, reporting the last known", "err", err)
	}
	resp.DeadLetters = n
	return resp, nil
}

// ListDeadLetters lists dead letters in topic order, a page at a time.
func (s *Service) ListDeadLetters(ctx context.Context, req *publisherv1.ListDeadLettersRequest) (*publisherv1.ListDeadLettersResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, apperr.E(apperr.Invalid, "invalid_page_size", "page_size must not be negative")
	case size == 0:
		size = DefaultPageSize
	case size > MaxPageSize:
		size = MaxPageSize
	}
	from, err := deadletter.ParsePageToken(req.GetPageToken())
	if err != nil {
		return nil, apperr.E(apperr.Invalid, "invalid_page_token", "page_token is not a next_page_token of ListDeadLetters")
	}
	letters, next, more, err := s.letters.List(ctx, from, size, req.GetIncludeReplayed())
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Unavailable, "kafka_unavailable", "cannot read the dead-letter topic, retry later")
	}
	resp := &publisherv1.ListDeadLettersResponse{DeadLetters: make([]*publisherv1.DeadLetter, len(letters))}
	if more {
		resp.NextPageToken = deadletter.EncodePageToken(next)
	}
	for i, l := range letters {
		resp.DeadLetters[i] = &publisherv1.DeadLetter{
			Partition:     l.Partition,
			Offset:        l.Offset,
			OriginalTopic: l.OriginalTopic,
			EventId:       l.EventID,
			Reason:        l.Reason,
			Attempts:      l.Attempts,
			FailedAt:      timestamppb.New(l.FailedAt),
			SizeBytes:     l.SizeBytes,
			Replayed:      l.Replayed,
		}
	}
	return resp, nil
}

// ReplayDeadLetters republishes dead letters to their original topics.
func (s *Service) ReplayDeadLetters(ctx context.Context, req *publisherv1.ReplayDeadLettersRequest) (*publisherv1.ReplayDeadLettersResponse, error) {
	if len(req.GetEventIds()) > MaxReplayIDs || len(req.GetRanges()) > MaxReplayRanges {
		return nil, apperr.E(apperr.Invalid, "too_many_selectors",
			fmt.Sprintf("at most %d event_ids and %d ranges per call; replay a range instead", MaxReplayIDs, MaxReplayRanges))
	}
	for _, id := range req.GetEventIds() {
		if id == "" || len(id) > 128 {
			return nil, apperr.E(apperr.Invalid, "invalid_event_id", "event_ids must be non-empty ids of at most 128 characters")
		}
	}
	ranges := make([]deadletter.Range, len(req.GetRanges()))
	for i, r := range req.GetRanges() {
		if r.GetPartition() < 0 || r.GetFromOffset() < 0 || r.GetToOffset() < r.GetFromOffset() {
			return nil, apperr.E(apperr.Invalid, "invalid_range", "a range needs a partition >= 0 and 0 <= from_offset <= to_offset")
		}
		ranges[i] = deadletter.Range{Partition: r.GetPartition(), From: r.GetFromOffset(), To: r.GetToOffset()}
	}
	replayed, failed, err := s.letters.Replay(ctx, req.GetEventIds(), ranges)
	if err != nil && replayed == 0 && failed == 0 {
		return nil, apperr.Wrap(err, apperr.Unavailable, "kafka_unavailable", "cannot read the dead-letter topic, retry later")
	}
	return &publisherv1.ReplayDeadLettersResponse{Replayed: int32(replayed), Failed: int32(failed)}, nil
}
