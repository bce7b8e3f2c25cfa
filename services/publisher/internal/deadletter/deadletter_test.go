package deadletter_test

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/publisher/internal/deadletter"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/kafkadev"
)

func setup(t *testing.T) (*kafka.Conn, *deadletter.Store) {
	t.Helper()
	b, err := kafkadev.StartConfig(t.Context(), kafkadev.Config{Addr: "127.0.0.1:0"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	conn, err := kafka.Connect(t.Context(), kafka.Config{
		Brokers: []string{b.Addr()}, Version: sarama.V3_6_0_0, ClientID: "test",
		MaxMessageBytes: 1000000, DeadLetterMaxMessageBytes: 2 << 20,
		Partitions: 2, ReplicationFactor: 1, CreateTopics: true,
	}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	store := deadletter.New(conn.DeadLetterReader, conn.Producer, conn.DeadLetter, prometheus.NewRegistry(), slog.New(slog.DiscardHandler), time.Hour)
	return conn, store
}

func deadLetter(t *testing.T, conn *kafka.Conn, user, eventID, reason string, info kafka.DeadLetterInfo) {
	t.Helper()
	orig := &sarama.ProducerMessage{
		Topic: kafka.TopicEvents, Key: sarama.StringEncoder(user), Value: sarama.ByteEncoder("value-" + eventID),
		Headers: []sarama.RecordHeader{
			{Key: []byte("ce_id"), Value: []byte(eventID)},
			{Key: []byte("ce_type"), Value: []byte("biobridge.biometrics.event.v1.upsert")},
		},
	}
	info.Reason = reason
	_, _, err := conn.DeadLetter.SendMessage(kafka.DeadLetter(orig, info))
	require.NoError(t, err)
}

func TestListAndReplay(t *testing.T) {
	t.Parallel()
	conn, store := setup(t)
	ctx := t.Context()

	n, err := store.Pending(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "empty topic")

	t0 := time.Now().Add(-time.Minute).UTC()
	deadLetter(t, conn, "u1", "ev-1", "message_too_large", kafka.DeadLetterInfo{Attempts: 1, FailedAt: t0})
	deadLetter(t, conn, "u2", "ev-2", "max_attempts_exceeded", kafka.DeadLetterInfo{Attempts: 5, FailedAt: t0.Add(time.Second)})
	// A publisher that died between dead-lettering and acking writes the
	// same letter twice: it is one dead letter.
	deadLetter(t, conn, "u1", "ev-1", "message_too_large", kafka.DeadLetterInfo{Attempts: 1, FailedAt: t0.Add(2 * time.Second)})
	deadLetter(t, conn, "u3", "ev-3", "message_too_large", kafka.DeadLetterInfo{Attempts: 1, FailedAt: t0.Add(3 * time.Second), OmitValue: true})
	store.Invalidate()

	letters := listAll(t, store, 1, false)
	require.Len(t, letters, 3)
	byID := map[string]deadletter.Letter{}
	for _, l := range letters {
		byID[l.EventID] = l
	}
	require.Len(t, byID, 3)
	require.Equal(t, "message_too_large", byID["ev-1"].Reason)
	require.Equal(t, kafka.TopicEvents, byID["ev-1"].OriginalTopic)
	require.EqualValues(t, 5, byID["ev-2"].Attempts)
	require.WithinDuration(t, t0, byID["ev-1"].FailedAt, time.Millisecond)
	require.EqualValues(t, len("value-ev-1"), byID["ev-1"].SizeBytes)
	require.True(t, byID["ev-3"].ValueOmitted)
	n, err = store.Pending(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 3, n)

	limited, next, more, err := store.List(ctx, deadletter.Position{}, 1, false)
	require.NoError(t, err)
	require.Len(t, limited, 1)
	require.True(t, more)
	require.Equal(t, letters[1].Partition, next.Partition, "the cursor points at the next letter")
	require.Equal(t, letters[1].Offset, next.Offset)

	// Replay one by id: it reaches its original topic with its original
	// key, value and headers, and no dlq_ headers.
	replayed, failed, err := store.Replay(ctx, []string{"ev-2"}, nil)
	require.NoError(t, err)
	require.Equal(t, 1, replayed)
	require.Zero(t, failed)
	msgs := consumeTopic(t, conn, kafka.TopicEvents, 1)
	require.Equal(t, "u2", string(msgs[0].Key))
	require.Equal(t, "value-ev-2", string(msgs[0].Value))
	require.Equal(t, "ev-2", kafka.Header(msgs[0].Headers, "ce_id"))
	require.Equal(t, "biobridge.biometrics.event.v1.upsert", kafka.Header(msgs[0].Headers, "ce_type"))
	require.Empty(t, kafka.Header(msgs[0].Headers, "dlq_reason"))

	letters = listAll(t, store, 100, false)
	require.Len(t, letters, 2, "the replayed letter is hidden by default")
	all := listAll(t, store, 2, true)
	require.Len(t, all, 3)
	for _, l := range all {
		require.Equal(t, l.EventID == "ev-2", l.Replayed, l.EventID)
	}
	n, err = store.Pending(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, n)

	// Replay the rest: the letter without its value cannot be replayed and
	// stays a dead letter; a replayed one is not replayed twice.
	replayed, failed, err = store.Replay(ctx, nil, nil)
	require.NoError(t, err)
	require.Equal(t, 1, replayed)
	require.Equal(t, 1, failed)
	// A fresh store (another replica, a restart) reads the markers back.
	fresh := deadletter.New(conn.DeadLetterReader, conn.Producer, conn.DeadLetter, prometheus.NewRegistry(), slog.New(slog.DiscardHandler), time.Hour)
	letters = listAll(t, fresh, 100, false)
	require.Len(t, letters, 1)
	require.Equal(t, "ev-3", letters[0].EventID)
	consumeTopic(t, conn, kafka.TopicEvents, 2)
}

// listAll pages through store's letters with pages of size.
func listAll(t *testing.T, store *deadletter.Store, size int, includeReplayed bool) []deadletter.Letter {
	t.Helper()
	var all []deadletter.Letter
	from := deadletter.Position{}
	for page := 0; ; page++ {
		require.Less(t, page, 100000, "paging ends")
		letters, next, more, err := store.List(t.Context(), from, size, includeReplayed)
		require.NoError(t, err)
		require.LessOrEqual(t, len(letters), size)
		all = append(all, letters...)
		if !more {
			return all
		}
		from = next
	}
}

// TestReplayRange: a range replays exactly the letters of its partition
// between its offsets that were not replayed yet.
func TestReplayRange(t *testing.T) {
	t.Parallel()
	conn, store := setup(t)
	ctx := t.Context()
	for i := range 6 {
		deadLetter(t, conn, "same-user", fmt.Sprintf("ev-%d", i), "message_too_large", kafka.DeadLetterInfo{Attempts: 1, FailedAt: time.Now()})
	}
	letters := listAll(t, store, 100, false)
	require.Len(t, letters, 6)
	p := letters[0].Partition
	replayed, failed, err := store.Replay(ctx, nil, []deadletter.Range{{Partition: p, From: letters[1].Offset, To: letters[3].Offset}})
	require.NoError(t, err)
	require.Equal(t, 3, replayed)
	require.Zero(t, failed)
	msgs := consumeTopic(t, conn, kafka.TopicEvents, 3)
	for i, m := range msgs {
		require.Equal(t, fmt.Sprintf("ev-%d", i+1), kafka.Header(m.Headers, "ce_id"), "in topic order")
	}
	// The same range again replays nothing new.
	replayed, _, err = store.Replay(ctx, nil, []deadletter.Range{{Partition: p, From: letters[0].Offset, To: letters[3].Offset}})
	require.NoError(t, err)
	require.Equal(t, 1, replayed, "only ev-0 was left in the range")
	n, err := store.Pending(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
}

// TestConcurrentCallsShareOneScan: many callers at once read each record
// of the topic once between them.
func TestConcurrentCallsShareOneScan(t *testing.T) {
	t.Parallel()
	conn, _ := setup(t)
	for i := range 50 {
		deadLetter(t, conn, fmt.Sprintf("u%d", i), fmt.Sprintf("ev-%d", i), "message_too_large", kafka.DeadLetterInfo{Attempts: 1, FailedAt: time.Now()})
	}
	reg := prometheus.NewRegistry()
	store := deadletter.New(conn.DeadLetterReader, conn.Producer, conn.DeadLetter, reg, slog.New(slog.DiscardHandler), time.Hour)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			letters, _, _, err := store.List(t.Context(), deadletter.Position{}, 1000, false)
			assert.NoError(t, err)
			assert.Len(t, letters, 50)
		})
	}
	wg.Wait()
	require.EqualValues(t, 50, counter(t, reg, "publisher_dead_letter_records_read_total"), "each record read once")
	// Nothing new: a later call reads nothing.
	_, _, _, err := store.List(t.Context(), deadletter.Position{}, 10, false)
	require.NoError(t, err)
	require.EqualValues(t, 50, counter(t, reg, "publisher_dead_letter_records_read_total"))
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestPageToken(t *testing.T) {
	t.Parallel()
	for _, p := range []deadletter.Position{{}, {Partition: 3, Offset: 1 << 40}} {
		got, err := deadletter.ParsePageToken(deadletter.EncodePageToken(p))
		require.NoError(t, err)
		require.Equal(t, p, got)
	}
	for _, bad := range []string{"x", "MTox", "MjoxOjE", "MTotMToy", strings.Repeat("A", 100)} {
		_, err := deadletter.ParsePageToken(bad)
		require.ErrorIs(t, err, deadletter.ErrInvalidPageToken, bad)
	}
}

// FuzzParsePageToken: any token a client sends is either rejected or
// names a position that encodes back to an equivalent token.
func FuzzParsePageToken(f *testing.F) {
	f.Add(deadletter.EncodePageToken(deadletter.Position{Partition: 1, Offset: 42}))
	f.Add("")
	f.Add("MTox")
	f.Fuzz(func(t *testing.T, tok string) {
		p, err := deadletter.ParsePageToken(tok)
		if err != nil {
			return
		}
		again, err := deadletter.ParsePageToken(deadletter.EncodePageToken(p))
		if err != nil || again != p || p.Partition < 0 || p.Offset < 0 {
			t.Fatalf("token %q: %+v then %+v, %v", tok, p, again, err)
		}
	})
}

// consumeTopic reads every partition of topic from the start until want
// messages arrived.
func consumeTopic(t *testing.T, conn *kafka.Conn, topic string, want int) []*sarama.ConsumerMessage {
	t.Helper()
	c, err := sarama.NewConsumerFromClient(conn.Client)
	require.NoError(t, err)
	defer func() { require.NoError(t, c.Close()) }()
	parts, err := conn.Client.Partitions(topic)
	require.NoError(t, err)
	var pcs []sarama.PartitionConsumer
	for _, p := range parts {
		pc, err := c.ConsumePartition(topic, p, sarama.OffsetOldest)
		require.NoError(t, err)
		pcs = append(pcs, pc)
	}
	defer func() {
		for _, pc := range pcs {
			require.NoError(t, pc.Close())
		}
	}()
	var got []*sarama.ConsumerMessage
	require.Eventually(t, func() bool {
		for _, pc := range pcs {
		drain:
			for {
				select {
				case m := <-pc.Messages():
					got = append(got, m)
				default:
					break drain
				}
			}
		}
		return len(got) >= want
	}, 10*time.Second, 20*time.Millisecond)
	require.Len(t, got, want)
	return got
}
