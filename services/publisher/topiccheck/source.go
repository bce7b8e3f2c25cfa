package topiccheck

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/pkg/outboxrun"
	"github.com/biobridge/bridge/services/publisher/kafka"
)

// Decode turns one consumed record into a Message. A value that is not a
// BiometricEvent leaves Record zero; a record without a ce_id header leaves
// EventID empty (Check counts it undecodable). It never fails: the topic is
// outside input.
func Decode(partition int32, offset int64, key, value []byte, headers []*sarama.RecordHeader) Message {
	m := Message{Partition: partition, Offset: offset, Key: string(key), EventID: kafka.Header(headers, kafka.HeaderID)}
	var ev biometricsv1.BiometricEvent
	if err := proto.Unmarshal(value, &ev); err == nil && ev.GetVendorRecordId() != "" {
		m.Record = RecordVersion{
			UserID:         ev.GetUserId(),
			Source:         int32(ev.GetSource()),
			VendorRecordID: ev.GetVendorRecordId(),
			Version:        ev.GetVersion(),
		}
	}
	return m
}

// ReadTopic reads every partition of topic from its oldest offset up to the
// end it had when the read started, and returns the records' metadata
// (values are decoded and dropped at once, so memory grows with the number
// of records, not their size).
func ReadTopic(ctx context.Context, client sarama.Client, topic string) ([]Message, error) {
	var out []Message
	err := scan(ctx, client, topic, func(m *sarama.ConsumerMessage) {
		out = append(out, Decode(m.Partition, m.Offset, m.Key, m.Value, m.Headers))
	})
	return out, err
}

// ReadDeadLetteredIDs returns the ce_ids of the dead letters on topic whose
// original topic is eventsTopic (replay markers are skipped: a replayed
// letter's event is on the event topic again).
func ReadDeadLetteredIDs(ctx context.Context, client sarama.Client, topic, eventsTopic string) ([]string, error) {
	var ids []string
	err := scan(ctx, client, topic, func(m *sarama.ConsumerMessage) {
		if kafka.Header(m.Headers, kafka.HeaderDLQOriginalTopic) == eventsTopic {
			ids = append(ids, kafka.Header(m.Headers, kafka.HeaderID))
		}
	})
	return ids, err
}

// scan calls fn for every record of topic, partition by partition, from the
// oldest offset to the newest one seen at the start.
func scan(ctx context.Context, client sarama.Client, topic string, fn func(*sarama.ConsumerMessage)) error {
	if err := client.RefreshMetadata(topic); err != nil {
		return fmt.Errorf("metadata of %s: %w", topic, err)
	}
	partitions, err := client.Partitions(topic)
	if err != nil {
		return fmt.Errorf("partitions of %s: %w", topic, err)
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	defer func() { _ = consumer.Close() }()
	for _, p := range partitions {
		oldest, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			return fmt.Errorf("%s/%d oldest offset: %w", topic, p, err)
		}
		newest, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return fmt.Errorf("%s/%d newest offset: %w", topic, p, err)
		}
		if newest <= oldest {
			continue
		}
		if err := scanPartition(ctx, consumer, topic, p, oldest, newest, fn); err != nil {
			return err
		}
	}
	return nil
}

func scanPartition(ctx context.Context, consumer sarama.Consumer, topic string, p int32, from, end int64, fn func(*sarama.ConsumerMessage)) error {
	pc, err := consumer.ConsumePartition(topic, p, from)
	if err != nil {
		return fmt.Errorf("consume %s/%d: %w", topic, p, err)
	}
	defer func() { _ = pc.Close() }()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("read %s/%d: %w", topic, p, ctx.Err())
		case cerr := <-pc.Errors():
			return fmt.Errorf("read %s/%d: %w", topic, p, cerr)
		case m := <-pc.Messages():
			fn(m)
			if m.Offset >= end-1 {
				return nil
			}
		}
	}
}

// Querier is what LoadCommitted needs of a pgx connection or pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// LoadCommitted reads, from persistence's schema (biometrics), the events
// received at or after since, and the event ids still waiting in the
// outbox for topic.
func LoadCommitted(ctx context.Context, db Querier, since time.Time, topic string) (committed []Committed, pending []string, err error) {
	rows, err := db.Query(ctx, `
		SELECT event_id::text, user_id, received_at, source, vendor_record_id, version
		FROM biometrics.events WHERE received_at >= $1`, since)
	if err != nil {
		return nil, nil, fmt.Errorf("read events: %w", err)
	}
	committed, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Committed, error) {
		var c Committed
		var source int16
		err := r.Scan(&c.EventID, &c.Key, &c.ReceivedAt, &source, &c.Record.VendorRecordID, &c.Record.Version)
		c.Record.UserID, c.Record.Source = c.Key, int32(source)
		return c, err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read events: %w", err)
	}
	// A run (package outboxrun) is its events from the first one not yet
	// acknowledged as published.
	rows, err = db.Query(ctx, `SELECT payload_type, payload, sent FROM biometrics.outbox WHERE topic = $1`, topic)
	if err != nil {
		return nil, nil, fmt.Errorf("read outbox: %w", err)
	}
	var (
		typ     int16
		payload []byte
		sent    int32
	)
	_, err = pgx.ForEachRow(rows, []any{&typ, &payload, &sent}, func() error {
		events := [][]byte{payload}
		if typ == outboxrun.PayloadType {
			all, err := outboxrun.Split(payload)
			if err != nil {
				return err
			}
			events = all[min(int(sent), len(all)):]
		}
		for _, p := range events {
			var ev biometricsv1.BiometricEvent
			if err := proto.Unmarshal(p, &ev); err != nil {
				return errors.Join(errors.New("decode outbox payload"), err)
			}
			pending = append(pending, ev.GetEventId())
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read outbox: %w", err)
	}
	return committed, pending, nil
}

// Options say where Run reads.
type Options struct {
	// PostgresURL is persistence's database.
	PostgresURL string
	Brokers     []string
	// KafkaVersion is the oldest broker version (default 3.6.0).
	KafkaVersion sarama.KafkaVersion
	// Topic is the event topic (default biometrics.events.v1).
	Topic string
	// DeadLetterTopic, when set, holds events that count as dead-lettered,
	// not lost.
	DeadLetterTopic string
	// Since limits the check to events received from then on (zero: all).
	Since time.Time
}

// Run reads persistence's events and outbox, then the topics, and checks
// them. The database is read first: an event committed later and already
// published counts as unknown, never as lost.
func Run(ctx context.Context, o Options) (Report, error) {
	if o.Topic == "" {
		o.Topic = kafka.TopicEvents
	}
	if o.KafkaVersion == (sarama.KafkaVersion{}) {
		o.KafkaVersion = sarama.V3_6_0_0
	}
	cfg := kafka.SaramaConfig(kafka.Config{Version: o.KafkaVersion, ClientID: "topiccheck"}, 1<<20)
	// Hold few records at a time: dead letters can be megabytes each.
	cfg.ChannelBufferSize = 4
	client, err := sarama.NewClient(o.Brokers, cfg)
	if err != nil {
		return Report{}, fmt.Errorf("connect kafka: %w", err)
	}
	defer func() { _ = client.Close() }()
	conn, err := pgx.Connect(ctx, o.PostgresURL)
	if err != nil {
		return Report{}, fmt.Errorf("connect postgres: %w", err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()

	committed, pending, err := LoadCommitted(ctx, conn, o.Since, o.Topic)
	if err != nil {
		return Report{}, err
	}
	var dead []string
	if o.DeadLetterTopic != "" {
		if dead, err = ReadDeadLetteredIDs(ctx, client, o.DeadLetterTopic, o.Topic); err != nil {
			return Report{}, err
		}
	}
	msgs, err := ReadTopic(ctx, client, o.Topic)
	if err != nil {
		return Report{}, err
	}
	return Check(Input{Committed: committed, Messages: msgs, Pending: pending, DeadLettered: dead}), nil
}
