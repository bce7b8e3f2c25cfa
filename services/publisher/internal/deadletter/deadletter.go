// Package deadletter reads and replays the dead-letter topic.
//
// The publisher holds no durable state of its own, so the dead-letter topic
// is the whole record: each dead letter is the original message (key, value
// and headers) plus dlq_* headers saying why, when and after how many
// attempts it failed. A replay republishes the original message to its
// original topic and then appends a marker record to the dead-letter topic
// (empty value, header dlq_replay_of = the event id) under the same key, so
// it lands in the same partition after the letter it marks. Listing reads
// the topic from the oldest offset and applies the markers in order.
//
// A replay that republished but could not write its marker shows the letter
// as not replayed; replaying it again publishes a duplicate with the same
// ce_id, which consumers already drop. A replayed event arrives after any
// newer events of the same user; consumers order by the event's version.
package deadletter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/biobridge/bridge/services/publisher/internal/kafka"
)

// Letter is one dead letter.
type Letter struct {
	Partition     int32
	Offset        int64
	OriginalTopic string
	EventID       string
	Reason        string
	Error         string
	Attempts      int32
	FailedAt      time.Time
	SizeBytes     int32
	ValueOmitted  bool
	Replayed      bool

	key     []byte
	value   []byte
	headers []sarama.RecordHeader
}

// Sender is the part of sarama.SyncProducer the store uses.
type Sender interface {
	SendMessage(msg *sarama.ProducerMessage) (partition int32, offset int64, err error)
}

// Store reads and replays the dead-letter topic.
type Store struct {
	client    sarama.Client
	republish Sender
	markers   Sender
	logger    *slog.Logger
	pending   prometheus.Gauge
	replayed  prometheus.Counter
	cacheTTL  time.Duration

	replayMu sync.Mutex // one replay at a time per instance

	mu        sync.Mutex
	count     int64
	scannedAt time.Time
	dirty     bool
}

// New returns a store reading through client, republishing with republish
// (the event producer) and writing replay markers with markers (the
// dead-letter producer). The pending count is cached for cacheTTL.
func New(client sarama.Client, republish, markers Sender, reg prometheus.Registerer, logger *slog.Logger, cacheTTL time.Duration) *Store {
	f := promauto.With(reg)
	return &Store{
		client:    client,
		republish: republish,
		markers:   markers,
		logger:    logger.With("component", "deadletter"),
		cacheTTL:  cacheTTL,
		dirty:     true,
		pending: f.NewGauge(prometheus.GaugeOpts{
			Name: "publisher_dead_letters_pending",
			Help: "Messages on the dead-letter topic that were not replayed.",
		}),
		replayed: f.NewCounter(prometheus.CounterOpts{
			Name: "publisher_dead_letters_replayed_total",
			Help: "Dead letters republished to their original topic.",
		}),
	}
}

// Invalidate makes the next Pending call read the topic again.
func (s *Store) Invalidate() {
	s.mu.Lock()
	s.dirty = true
	s.mu.Unlock()
}

// Pending returns how many dead letters were not replayed, reading the topic
// when the cached count is stale. When reading fails it returns the last
// count it knew together with the error.
func (s *Store) Pending(ctx context.Context) (int64, error) {
	s.mu.Lock()
	if !s.dirty && time.Since(s.scannedAt) < s.cacheTTL {
		defer s.mu.Unlock()
		return s.count, nil
	}
	s.mu.Unlock()
	_, err := s.Scan(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count, err
}

// List returns up to limit dead letters, oldest first.
func (s *Store) List(ctx context.Context, limit int, includeReplayed bool) ([]Letter, error) {
	all, err := s.Scan(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Letter, 0, min(limit, len(all)))
	for _, l := range all {
		if l.Replayed && !includeReplayed {
			continue
		}
		if len(out) == limit {
			break
		}
		out = append(out, l)
	}
	return out, nil
}

// Scan reads the whole dead-letter topic and returns every dead letter
// (one per event id), oldest first, with its replay state.
func (s *Store) Scan(ctx context.Context) ([]Letter, error) {
	// Invalidate before reading: a dead letter written during the scan
	// marks the count dirty again.
	s.mu.Lock()
	s.dirty = false
	s.mu.Unlock()

	topic := kafka.TopicDeadLetters
	if err := s.client.RefreshMetadata(topic); err != nil {
		s.Invalidate()
		return nil, fmt.Errorf("dead-letter metadata: %w", err)
	}
	partitions, err := s.client.Partitions(topic)
	if err != nil {
		s.Invalidate()
		return nil, fmt.Errorf("dead-letter partitions: %w", err)
	}
	consumer, err := sarama.NewConsumerFromClient(s.client)
	if err != nil {
		s.Invalidate()
		return nil, fmt.Errorf("dead-letter consumer: %w", err)
	}
	defer func() { _ = consumer.Close() }()

	byID := make(map[string]*Letter)
	for _, p := range partitions {
		if err := s.scanPartition(ctx, consumer, p, byID); err != nil {
			s.Invalidate()
			return nil, err
		}
	}
	letters := make([]Letter, 0, len(byID))
	var pending int64
	for _, l := range byID {
		letters = append(letters, *l)
		if !l.Replayed {
			pending++
		}
	}
	slices.SortFunc(letters, func(a, b Letter) int {
		return cmp.Or(a.FailedAt.Compare(b.FailedAt), cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.Offset, b.Offset))
	})
	s.mu.Lock()
	s.count, s.scannedAt = pending, time.Now()
	s.mu.Unlock()
	s.pending.Set(float64(pending))
	return letters, nil
}

func (s *Store) scanPartition(ctx context.Context, consumer sarama.Consumer, p int32, byID map[string]*Letter) error {
	topic := kafka.TopicDeadLetters
	oldest, err := s.client.GetOffset(topic, p, sarama.OffsetOldest)
	if err != nil {
		return fmt.Errorf("dead-letter partition %d oldest offset: %w", p, err)
	}
	newest, err := s.client.GetOffset(topic, p, sarama.OffsetNewest)
	if err != nil {
		return fmt.Errorf("dead-letter partition %d newest offset: %w", p, err)
	}
	if newest <= oldest {
		return nil
	}
	pc, err := consumer.ConsumePartition(topic, p, oldest)
	if err != nil {
		return fmt.Errorf("consume dead-letter partition %d: %w", p, err)
	}
	defer func() { _ = pc.Close() }()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("read dead-letter partition %d: %w", p, ctx.Err())
		case cerr := <-pc.Errors():
			return fmt.Errorf("read dead-letter partition %d: %w", p, cerr)
		case m := <-pc.Messages():
			apply(m, byID)
			if m.Offset >= newest-1 {
				return nil
			}
		}
	}
}

// apply folds one record of the topic into byID: a dead letter adds (or
// re-adds after a replay) its event; a marker flags it replayed.
func apply(m *sarama.ConsumerMessage, byID map[string]*Letter) {
	if id := kafka.Header(m.Headers, kafka.HeaderDLQReplayOf); id != "" {
		if l, ok := byID[id]; ok {
			l.Replayed = true
		}
		return
	}
	orig := kafka.Header(m.Headers, kafka.HeaderDLQOriginalTopic)
	if orig == "" {
		return
	}
	id := kafka.Header(m.Headers, kafka.HeaderID)
	if prev, ok := byID[id]; ok && !prev.Replayed {
		// The same entry dead-lettered twice (a publisher died between
		// the dead letter and the ack): one letter, the first.
		return
	}
	attempts, _ := strconv.Atoi(kafka.Header(m.Headers, kafka.HeaderDLQAttempts))
	failedAt, _ := time.Parse(time.RFC3339Nano, kafka.Header(m.Headers, kafka.HeaderDLQFailedAt))
	l := &Letter{
		Partition:     m.Partition,
		Offset:        m.Offset,
		OriginalTopic: orig,
		EventID:       id,
		Reason:        kafka.Header(m.Headers, kafka.HeaderDLQReason),
		Error:         kafka.Header(m.Headers, kafka.HeaderDLQError),
		Attempts:      int32(attempts),
		FailedAt:      failedAt,
		SizeBytes:     int32(len(m.Value)),
		ValueOmitted:  kafka.Header(m.Headers, kafka.HeaderDLQValueOmitted) == "true",
		key:           m.Key,
		value:         m.Value,
	}
	for _, h := range m.Headers {
		if h != nil && !strings.HasPrefix(string(h.Key), "dlq_") {
			l.headers = append(l.headers, sarama.RecordHeader{Key: h.Key, Value: h.Value})
		}
	}
	byID[id] = l
}

// ErrValueOmitted is the replay failure of a dead letter stored without
// its value (it was too large even for the dead-letter topic).
var ErrValueOmitted = errors.New("dead letter has no value to replay")

// Replay republishes the dead letters named by eventIDs (all not yet
// replayed ones when empty) to their original topics, oldest first, and
// marks each replayed. Letters that fail again stay dead letters.
func (s *Store) Replay(ctx context.Context, eventIDs []string) (replayed, failed int, err error) {
	s.replayMu.Lock()
	defer s.replayMu.Unlock()
	defer s.Invalidate()
	letters, err := s.Scan(ctx)
	if err != nil {
		return 0, 0, err
	}
	want := make(map[string]bool, len(eventIDs))
	for _, id := range eventIDs {
		want[id] = true
	}
	for _, l := range letters {
		if l.Replayed || (len(want) > 0 && !want[l.EventID]) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return replayed, failed, err
		}
		if err := s.replayOne(l); err != nil {
			failed++
			s.logger.WarnContext(ctx, "replay dead letter failed", "event_id", l.EventID, "topic", l.OriginalTopic, "err", err)
			continue
		}
		replayed++
		s.replayed.Inc()
		s.logger.InfoContext(ctx, "replayed dead letter", "event_id", l.EventID, "topic", l.OriginalTopic)
	}
	return replayed, failed, nil
}

func (s *Store) replayOne(l Letter) error {
	if l.ValueOmitted {
		return ErrValueOmitted
	}
	_, _, err := s.republish.SendMessage(&sarama.ProducerMessage{
		Topic:   l.OriginalTopic,
		Key:     sarama.ByteEncoder(l.key),
		Value:   sarama.ByteEncoder(l.value),
		Headers: l.headers,
	})
	if err != nil {
		return fmt.Errorf("republish to %s: %w", l.OriginalTopic, err)
	}
	if _, _, err := s.markers.SendMessage(kafka.ReplayMarker(l.key, l.EventID, time.Now())); err != nil {
		// Published but not marked: a later replay duplicates it (same
		// ce_id). Report success: the event did reach its topic.
		s.logger.Error("write replay marker failed", "event_id", l.EventID, "err", err)
	}
	return nil
}
