// Package deadletter reads and replays the dead-letter topic.
//
// The publisher holds no durable state of its own, so the dead-letter topic
// is the whole record: each dead letter is the original message (key, value
// and headers) plus dlq_* headers saying why, when and after how many
// attempts it failed. A replay republishes the original message to its
// original topic and then appends a marker record to the dead-letter topic
// (empty value, header dlq_replay_of = the event id) under the same key, so
// it lands in the same partition after the letter it marks.
//
// The topic can hold thousands of letters of megabytes each, so nothing
// holds it in memory. The store keeps an index of the letters' metadata
// (partition, offset, event id, reason, attempts, time, size, replayed:
// about 200 bytes a letter, never a key, value or header beyond those) that
// it brings up to date incrementally: it compares each partition's end
// offset with how far it has read (offsets, no values) and reads only the
// records added since, one at a time, keeping their metadata and dropping
// the rest. Concurrent callers share one such catch-up. Listing pages
// through the index in topic order (by partition, then offset) with a
// cursor; counting uses it as is. Replay reads back only the letters it
// replays, partition by partition in offset order, one record in memory at
// a time.
//
// A replay that republished but could not write its marker shows the letter
// as not replayed; replaying it again publishes a duplicate with the same
// ce_id, which consumers already drop. A replayed event arrives after any
// newer events of the same user; consumers order by the event's version.
package deadletter

import (
	"cmp"
	"context"
	"encoding/base64"
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
	"golang.org/x/sync/singleflight"

	"github.com/biobridge/bridge/services/publisher/kafka"
)

// Letter is one dead letter (its metadata: the key, value and headers stay
// on the topic).
type Letter struct {
	Partition     int32
	Offset        int64
	OriginalTopic string
	EventID       string
	Reason        string
	Attempts      int32
	FailedAt      time.Time
	SizeBytes     int32
	ValueOmitted  bool
	Replayed      bool
}

// Position is a place in the dead-letter topic: a partition and an offset
// in it. Listing in topic order resumes from one.
type Position struct {
	Partition int32
	Offset    int64
}

// Range selects the letters of one partition between two offsets
// (inclusive).
type Range struct {
	Partition int32
	From, To  int64
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
	read      prometheus.Counter
	cacheTTL  time.Duration

	replayMu sync.Mutex // one replay at a time per instance
	scans    singleflight.Group

	mu         sync.RWMutex
	partitions map[int32]*partitionIndex
	byID       map[string]*Letter // the current letter of each event id
	caughtUpAt time.Time
	dirty      bool
}

// partitionIndex is what the store knows of one partition.
type partitionIndex struct {
	next    int64     // the first offset not read yet
	letters []*Letter // in offset order
}

// New returns a store reading through client (whose consumer settings
// bound the memory a read takes: keep its ChannelBufferSize small),
// republishing with republish (the event producer) and writing replay
// markers with markers (the dead-letter producer). The index is brought up
// to date at most every cacheTTL for counts, and before every list and
// replay.
func New(client sarama.Client, republish, markers Sender, reg prometheus.Registerer, logger *slog.Logger, cacheTTL time.Duration) *Store {
	f := promauto.With(reg)
	return &Store{
		client:     client,
		republish:  republish,
		markers:    markers,
		logger:     logger.With("component", "deadletter"),
		cacheTTL:   cacheTTL,
		partitions: map[int32]*partitionIndex{},
		byID:       map[string]*Letter{},
		dirty:      true,
		pending: f.NewGauge(prometheus.GaugeOpts{
			Name: "publisher_dead_letters_pending",
			Help: "Messages on the dead-letter topic that were not replayed.",
		}),
		replayed: f.NewCounter(prometheus.CounterOpts{
			Name: "publisher_dead_letters_replayed_total",
			Help: "Dead letters republished to their original topic.",
		}),
		read: f.NewCounter(prometheus.CounterOpts{
			Name: "publisher_dead_letter_records_read_total",
			Help: "Records read from the dead-letter topic (index catch-up and replay).",
		}),
	}
}

// Invalidate makes the next Pending call look for new records.
func (s *Store) Invalidate() {
	s.mu.Lock()
	s.dirty = true
	s.mu.Unlock()
}

// Pending returns how many dead letters were not replayed. When the topic
// cannot be read it returns the last count it knew together with the error.
func (s *Store) Pending(ctx context.Context) (int64, error) {
	s.mu.RLock()
	fresh := !s.dirty && time.Since(s.caughtUpAt) < s.cacheTTL
	s.mu.RUnlock()
	var err error
	if !fresh {
		err = s.catchUp(ctx)
	}
	return s.count(), err
}

func (s *Store) count() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var n int64
	for _, l := range s.byID {
		if !l.Replayed {
			n++
		}
	}
	return n
}

// List returns up to limit dead letters in topic order, starting at from,
// and the position after the last one returned (ok false when there are
// no more).
func (s *Store) List(ctx context.Context, from Position, limit int, includeReplayed bool) (letters []Letter, next Position, more bool, err error) {
	if err := s.catchUp(ctx); err != nil {
		return nil, Position{}, false, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, p := range s.sortedPartitions() {
		if p < from.Partition {
			continue
		}
		idx := s.partitions[p]
		start := 0
		if p == from.Partition {
			start, _ = slices.BinarySearchFunc(idx.letters, from.Offset, func(l *Letter, o int64) int { return cmp.Compare(l.Offset, o) })
		}
		for _, l := range idx.letters[start:] {
			if l.Replayed && !includeReplayed {
				continue
			}
			if len(letters) == limit {
				return letters, Position{Partition: l.Partition, Offset: l.Offset}, true, nil
			}
			letters = append(letters, *l)
		}
	}
	return letters, Position{}, false, nil
}

func (s *Store) sortedPartitions() []int32 {
	ps := make([]int32, 0, len(s.partitions))
	for p := range s.partitions {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// catchUp reads the records added to the topic since the last catch-up.
// Concurrent callers share one read.
func (s *Store) catchUp(ctx context.Context) error {
	ch := s.scans.DoChan("catch-up", func() (any, error) {
		// The shared read must not end with the first caller's context.
		return nil, s.readNew(context.WithoutCancel(ctx))
	})
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Store) readNew(ctx context.Context) error {
	// Clear dirty first: a letter written during the read marks it again.
	s.mu.Lock()
	s.dirty = false
	s.mu.Unlock()
	fail := func(err error) error {
		s.Invalidate()
		return err
	}
	topic := kafka.TopicDeadLetters
	if err := s.client.RefreshMetadata(topic); err != nil {
		return fail(fmt.Errorf("dead-letter metadata: %w", err))
	}
	partitions, err := s.client.Partitions(topic)
	if err != nil {
		return fail(fmt.Errorf("dead-letter partitions: %w", err))
	}
	var consumer sarama.Consumer
	defer func() {
		if consumer != nil {
			_ = consumer.Close()
		}
	}()
	for _, p := range partitions {
		oldest, err := s.client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			return fail(fmt.Errorf("dead-letter partition %d oldest offset: %w", p, err))
		}
		newest, err := s.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return fail(fmt.Errorf("dead-letter partition %d newest offset: %w", p, err))
		}
		from := s.forget(p, oldest)
		if newest <= from {
			continue
		}
		if consumer == nil {
			if consumer, err = sarama.NewConsumerFromClient(s.client); err != nil {
				return fail(fmt.Errorf("dead-letter consumer: %w", err))
			}
		}
		err = s.readPartition(ctx, consumer, p, from, newest-1, func(m *sarama.ConsumerMessage) error {
			s.apply(m)
			return nil
		})
		if err != nil {
			return fail(err)
		}
	}
	s.mu.Lock()
	s.caughtUpAt = time.Now()
	s.mu.Unlock()
	s.pending.Set(float64(s.count()))
	return nil
}

// forget drops what the index holds of partition p below oldest (records
// the broker deleted) and returns where reading resumes.
func (s *Store) forget(p int32, oldest int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx := s.partitions[p]
	if idx == nil {
		idx = &partitionIndex{next: oldest}
		s.partitions[p] = idx
	}
	if oldest > idx.next {
		idx.next = oldest
	}
	cut := 0
	for cut < len(idx.letters) && idx.letters[cut].Offset < oldest {
		if s.byID[idx.letters[cut].EventID] == idx.letters[cut] {
			delete(s.byID, idx.letters[cut].EventID)
		}
		cut++
	}
	idx.letters = idx.letters[cut:]
	return idx.next
}

// readPartition calls fn with every record of partition p from offset from
// through to, in order, holding one record at a time.
func (s *Store) readPartition(ctx context.Context, consumer sarama.Consumer, p int32, from, to int64, fn func(*sarama.ConsumerMessage) error) error {
	topic := kafka.TopicDeadLetters
	pc, err := consumer.ConsumePartition(topic, p, from)
	if err != nil {
		return fmt.Errorf("consume dead-letter partition %d: %w", p, err)
	}
	defer func() { _ = pc.Close() }()
	// No progress for this long means the broker is gone; a slow but
	// moving read of a large partition goes on.
	const stall = 30 * time.Second
	t := time.NewTimer(stall)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("read dead-letter partition %d: %w", p, ctx.Err())
		case <-t.C:
			return fmt.Errorf("read dead-letter partition %d: no record for %s", p, stall)
		case cerr := <-pc.Errors():
			return fmt.Errorf("read dead-letter partition %d: %w", p, cerr)
		case m := <-pc.Messages():
			s.read.Inc()
			if err := fn(m); err != nil {
				return err
			}
			if m.Offset >= to {
				return nil
			}
			t.Reset(stall)
		}
	}
}

// apply folds one record into the index: a dead letter adds (or re-adds
// after a replay) its event; a marker flags it replayed.
func (s *Store) apply(m *sarama.ConsumerMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx := s.partitions[m.Partition]
	idx.next = max(idx.next, m.Offset+1)
	if id := kafka.Header(m.Headers, kafka.HeaderDLQReplayOf); id != "" {
		if l, ok := s.byID[id]; ok {
			l.Replayed = true
		}
		return
	}
	orig := kafka.Header(m.Headers, kafka.HeaderDLQOriginalTopic)
	if orig == "" {
		return
	}
	id := kafka.Header(m.Headers, kafka.HeaderID)
	if prev, ok := s.byID[id]; ok && !prev.Replayed {
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
		Attempts:      int32(attempts),
		FailedAt:      failedAt,
		SizeBytes:     int32(len(m.Value)),
		ValueOmitted:  kafka.Header(m.Headers, kafka.HeaderDLQValueOmitted) == "true",
	}
	idx.letters = append(idx.letters, l)
	s.byID[id] = l
}

// ErrValueOmitted is the replay failure of a dead letter stored without
// its value (it was too large even for the dead-letter topic).
var ErrValueOmitted = errors.New("dead letter has no value to replay")

// Replay republishes the dead letters named by eventIDs or lying in ranges
// (every letter not yet replayed when both are empty) to their original
// topics, in topic order, and marks each replayed. Letters that fail again
// stay dead letters. It reads back only the partitions and offsets it
// replays, one record at a time.
func (s *Store) Replay(ctx context.Context, eventIDs []string, ranges []Range) (replayed, failed int, err error) {
	s.replayMu.Lock()
	defer s.replayMu.Unlock()
	defer s.Invalidate()
	if err := s.catchUp(ctx); err != nil {
		return 0, 0, err
	}
	targets := s.choose(eventIDs, ranges)
	if len(targets) == 0 {
		return 0, 0, nil
	}
	consumer, err := sarama.NewConsumerFromClient(s.client)
	if err != nil {
		return 0, 0, fmt.Errorf("dead-letter consumer: %w", err)
	}
	defer func() { _ = consumer.Close() }()
	for _, p := range sortedKeys(targets) {
		want := targets[p]
		// A letter without a value has nothing to read back.
		var read []*Letter
		for _, l := range want {
			if l.ValueOmitted {
				failed++
				s.logger.WarnContext(ctx, "replay dead letter failed", "event_id", l.EventID, "err", ErrValueOmitted)
				continue
			}
			read = append(read, l)
		}
		if len(read) == 0 {
			continue
		}
		next := 0
		err := s.readPartition(ctx, consumer, p, read[0].Offset, read[len(read)-1].Offset, func(m *sarama.ConsumerMessage) error {
			if next >= len(read) || m.Offset != read[next].Offset {
				return nil
			}
			l := read[next]
			next++
			if err := s.replayOne(ctx, l, m); err != nil {
				failed++
				s.logger.WarnContext(ctx, "replay dead letter failed", "event_id", l.EventID, "topic", l.OriginalTopic, "err", err)
				return nil
			}
			replayed++
			return nil
		})
		if err != nil {
			return replayed, failed, err
		}
	}
	return replayed, failed, nil
}

// choose returns the letters to replay per partition, in offset order.
func (s *Store) choose(eventIDs []string, ranges []Range) map[int32][]*Letter {
	want := make(map[string]bool, len(eventIDs))
	for _, id := range eventIDs {
		want[id] = true
	}
	all := len(eventIDs) == 0 && len(ranges) == 0
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[int32][]*Letter{}
	for p, idx := range s.partitions {
		for _, l := range idx.letters {
			if l.Replayed || s.byID[l.EventID] != l {
				continue
			}
			inRange := false
			for _, r := range ranges {
				if r.Partition == p && l.Offset >= r.From && l.Offset <= r.To {
					inRange = true
					break
				}
			}
			if all || want[l.EventID] || inRange {
				out[p] = append(out[p], l)
			}
		}
	}
	return out
}

func sortedKeys(m map[int32][]*Letter) []int32 {
	ks := make([]int32, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func (s *Store) replayOne(ctx context.Context, l *Letter, m *sarama.ConsumerMessage) error {
	var headers []sarama.RecordHeader
	for _, h := range m.Headers {
		if h != nil && !strings.HasPrefix(string(h.Key), "dlq_") {
			headers = append(headers, sarama.RecordHeader{Key: h.Key, Value: h.Value})
		}
	}
	_, _, err := s.republish.SendMessage(&sarama.ProducerMessage{
		Topic:   l.OriginalTopic,
		Key:     sarama.ByteEncoder(m.Key),
		Value:   sarama.ByteEncoder(m.Value),
		Headers: headers,
	})
	if err != nil {
		return fmt.Errorf("republish to %s: %w", l.OriginalTopic, err)
	}
	s.replayed.Inc()
	s.mu.Lock()
	l.Replayed = true
	s.mu.Unlock()
	s.logger.InfoContext(ctx, "replayed dead letter", "event_id", l.EventID, "topic", l.OriginalTopic)
	if _, _, err := s.markers.SendMessage(kafka.ReplayMarker(m.Key, l.EventID, time.Now())); err != nil {
		// Published but not marked: a later replay duplicates it (same
		// ce_id). Report success: the event did reach its topic.
		s.logger.ErrorContext(ctx, "write replay marker failed", "event_id", l.EventID, "err", err)
	}
	return nil
}

// A page token is an opaque, versioned position: base64url("1:<partition>:<offset>").
const tokenVersion = "1"

// EncodePageToken returns the token that resumes a listing at p.
func EncodePageToken(p Position) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%s:%d:%d", tokenVersion, p.Partition, p.Offset))
}

// ErrInvalidPageToken is the failure of a page token this store did not
// issue.
var ErrInvalidPageToken = errors.New("invalid page token")

// ParsePageToken reads a token from EncodePageToken; the empty token is the
// start of the topic.
func ParsePageToken(tok string) (Position, error) {
	if tok == "" {
		return Position{}, nil
	}
	if len(tok) > 64 {
		return Position{}, ErrInvalidPageToken
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return Position{}, ErrInvalidPageToken
	}
	parts := strings.Split(string(raw), ":")
	if len(parts) != 3 || parts[0] != tokenVersion {
		return Position{}, ErrInvalidPageToken
	}
	partition, err1 := strconv.ParseInt(parts[1], 10, 32)
	offset, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || partition < 0 || offset < 0 {
		return Position{}, ErrInvalidPageToken
	}
	return Position{Partition: int32(partition), Offset: offset}, nil
}
