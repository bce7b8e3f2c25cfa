package kafka_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/eapache/go-resiliency/breaker"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/kafkadev"
)

func testConfig(addr string) kafka.Config {
	return kafka.Config{
		Brokers:                   []string{addr},
		Version:                   sarama.V3_6_0_0,
		ClientID:                  "test",
		MaxMessageBytes:           1000000,
		DeadLetterMaxMessageBytes: 4 << 20,
		Partitions:                3,
		ReplicationFactor:         1,
		CreateTopics:              true,
	}
}

func startBroker(t *testing.T, configs map[string]string) string {
	t.Helper()
	b, err := kafkadev.StartConfig(t.Context(), kafkadev.Config{Addr: "127.0.0.1:0", BrokerConfigs: configs})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b.Addr()
}

func TestConnectCreatesTopicsOnce(t *testing.T) {
	t.Parallel()
	addr := startBroker(t, nil)
	for range 2 { // the second start finds the topics and keeps them
		conn, err := kafka.Connect(t.Context(), testConfig(addr), slog.New(slog.DiscardHandler))
		require.NoError(t, err)
		for _, topic := range []string{kafka.TopicEvents, kafka.TopicConnections, kafka.TopicDeadLetters} {
			parts, err := conn.Client.Partitions(topic)
			require.NoError(t, err, topic)
			require.Len(t, parts, 3, topic)
		}
		require.NoError(t, conn.Ping())
		require.NoError(t, conn.Close())
	}

	admin, err := sarama.NewClusterAdmin([]string{addr}, kafka.SaramaConfig(testConfig(addr), 1000000))
	require.NoError(t, err)
	defer func() { require.NoError(t, admin.Close()) }()
	entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: kafka.TopicDeadLetters})
	require.NoError(t, err)
	var dlqMax string
	for _, e := range entries {
		if e.Name == "max.message.bytes" {
			dlqMax = e.Value
		}
	}
	require.Equal(t, fmt.Sprint(4<<20+64<<10), dlqMax, "the dead-letter topic must admit messages too large for the event topic")
}

func TestConnectFailsWithoutBroker(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	_, err = kafka.Connect(t.Context(), testConfig(addr), slog.New(slog.DiscardHandler))
	require.Error(t, err)
}

func TestBuildMessage(t *testing.T) {
	t.Parallel()
	occurred := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	event := &biometricsv1.BiometricEvent{
		EventId: "ev-1", UserId: "user-1", Source: biometricsv1.Source_SOURCE_WHOOP,
		Operation: biometricsv1.Operation_OPERATION_DELETE, Version: 3,
		OccurredAt: timestamppb.New(occurred),
	}
	tests := []struct {
		name    string
		entry   *persistencev1.OutboxEntry
		wantKey string
		headers map[string]string
		payload proto.Message
	}{
		{
			name: "biometric event",
			entry: &persistencev1.OutboxEntry{
				Id: 1, Topic: kafka.TopicEvents, Key: "user-1", Traceparent: parent,
				Payload: &persistencev1.OutboxEntry_Event{Event: event},
			},
			wantKey: "user-1",
			headers: map[string]string{
				"ce_specversion": "1.0", "ce_id": "ev-1", "ce_source": "/biobridge/whoop",
				"ce_type": "biobridge.biometrics.event.v1.delete", "ce_time": "2026-11-20T08:00:00Z",
				"content-type": "application/protobuf",
			},
			payload: event,
		},
		{
			name: "connection event without key or time",
			entry: &persistencev1.OutboxEntry{
				Id: 2, Topic: kafka.TopicConnections, CreatedAt: timestamppb.New(occurred.Add(time.Hour)),
				Payload: &persistencev1.OutboxEntry_ConnectionEvent{ConnectionEvent: &biometricsv1.ConnectionEvent{
					EventId: "ev-2", UserId: "user-2", Vendor: "oura",
					Type: biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_REFRESH_FAILED,
				}},
			},
			wantKey: "user-2",
			headers: map[string]string{
				"ce_id": "ev-2", "ce_source": "/biobridge/oura",
				"ce_type": "biobridge.biometrics.connection.v1.refresh_failed", "ce_time": "2026-11-20T09:00:00Z",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A producer span continues the entry's trace.
			ctx := telemetry.Extract(t.Context(), func(k string) string {
				if k == "traceparent" {
					return tt.entry.GetTraceparent()
				}
				return ""
			}, nil)
			msg, err := kafka.BuildMessage(ctx, tt.entry)
			require.NoError(t, err)
			require.Equal(t, tt.entry.GetTopic(), msg.Topic)
			key, err := msg.Key.Encode()
			require.NoError(t, err)
			require.Equal(t, tt.wantKey, string(key))
			for k, v := range tt.headers {
				require.Equal(t, v, kafka.HeaderValue(msg.Headers, k), k)
			}
			if tt.entry.GetTraceparent() != "" {
				require.Equal(t, parent, kafka.HeaderValue(msg.Headers, "traceparent"))
			}
			if tt.payload != nil {
				value, err := msg.Value.Encode()
				require.NoError(t, err)
				got := &biometricsv1.BiometricEvent{}
				require.NoError(t, proto.Unmarshal(value, got))
				require.True(t, proto.Equal(tt.payload, got))
			}
		})
	}
	t.Run("no payload", func(t *testing.T) {
		t.Parallel()
		_, err := kafka.BuildMessage(t.Context(), &persistencev1.OutboxEntry{Id: 3, Topic: kafka.TopicEvents})
		require.ErrorIs(t, err, kafka.ErrInvalidEntry)
		require.Equal(t, kafka.Permanent, kafka.Classify(err).Class)
	})
}

func TestDeadLetterKeepsOriginalAndSaysWhy(t *testing.T) {
	t.Parallel()
	orig := &sarama.ProducerMessage{
		Topic: kafka.TopicEvents, Key: sarama.StringEncoder("user-1"), Value: sarama.ByteEncoder("payload"),
		Headers: []sarama.RecordHeader{
			{Key: []byte("ce_id"), Value: []byte("ev-1")},
			{Key: []byte("dlq_reason"), Value: []byte("stale")}, // from an earlier dead-lettering
		},
	}
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	dl := kafka.DeadLetter(orig, kafka.DeadLetterInfo{Reason: "message_too_large", Error: "too big", Attempts: 2, FailedAt: at})
	require.Equal(t, kafka.TopicDeadLetters, dl.Topic)
	require.Equal(t, orig.Key, dl.Key)
	require.Equal(t, orig.Value, dl.Value)
	require.Equal(t, "ev-1", kafka.HeaderValue(dl.Headers, "ce_id"))
	require.Equal(t, "message_too_large", kafka.HeaderValue(dl.Headers, "dlq_reason"))
	require.Equal(t, "2", kafka.HeaderValue(dl.Headers, "dlq_attempts"))
	require.Equal(t, "2026-11-20T08:00:00Z", kafka.HeaderValue(dl.Headers, "dlq_failed_at"))
	require.Equal(t, kafka.TopicEvents, kafka.HeaderValue(dl.Headers, "dlq_original_topic"))
	n := 0
	for _, h := range dl.Headers {
		if string(h.Key) == "dlq_reason" {
			n++
		}
	}
	require.Equal(t, 1, n, "old dlq headers are replaced, not repeated")

	omitted := kafka.DeadLetter(orig, kafka.DeadLetterInfo{Reason: "message_too_large", OmitValue: true, FailedAt: at})
	require.Nil(t, omitted.Value)
	require.Equal(t, "true", kafka.HeaderValue(omitted.Headers, "dlq_value_omitted"))
}

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err    error
		class  kafka.Class
		reason string
		shared bool
	}{
		{sarama.ErrOutOfBrokers, kafka.Transient, "broker_unavailable", false},
		{breaker.ErrBreakerOpen, kafka.Transient, "broker_unavailable", false},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), kafka.Transient, "broker_unavailable", false},
		{io.EOF, kafka.Transient, "broker_unavailable", false},
		{sarama.ErrLeaderNotAvailable, kafka.Transient, "leader_unavailable", false},
		{sarama.ErrNotLeaderForPartition, kafka.Transient, "leader_unavailable", false},
		{sarama.ErrRequestTimedOut, kafka.Transient, "timeout", false},
		{sarama.ErrNotEnoughReplicas, kafka.Transient, "not_enough_replicas", false},
		{sarama.ErrOutOfOrderSequenceNumber, kafka.Transient, "producer_state", false},
		{sarama.ErrTopicAuthorizationFailed, kafka.Transient, "not_authorized", false},
		{sarama.ErrShuttingDown, kafka.Transient, "shutting_down", false},
		{sarama.ErrMessageSizeTooLarge, kafka.Permanent, "message_too_large", true},
		{sarama.ConfigurationError("Attempt to produce message larger than configured Producer.MaxMessageBytes: 2 > 1"), kafka.Permanent, "message_too_large", false},
		{sarama.ErrInvalidRecord, kafka.Permanent, "invalid_record", true},
		{sarama.ErrInvalidTimestamp, kafka.Permanent, "invalid_timestamp", true},
		{sarama.ErrUnknown, kafka.Unknown, "kafka_error_-1", false},
		{errors.New("something else"), kafka.Unknown, "unknown", false},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.err.Error(), " ", "_"), func(t *testing.T) {
			t.Parallel()
			f := kafka.Classify(tt.err)
			require.Equal(t, tt.class, f.Class)
			require.Equal(t, tt.reason, f.Reason)
			require.Equal(t, tt.shared, f.Shared)
		})
	}
}

// TestBrokerRejectionsAreClassified checks the classification against what
// a broker and sarama really return, not just the error values.
func TestBrokerRejectionsAreClassified(t *testing.T) {
	t.Parallel()
	addr := startBroker(t, map[string]string{"message.max.bytes": "20000"})
	conn, err := kafka.Connect(t.Context(), testConfig(addr), slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })

	_, _, err = conn.Producer.SendMessage(&sarama.ProducerMessage{Topic: kafka.TopicEvents, Value: sarama.ByteEncoder(make([]byte, 50000))})
	require.Error(t, err)
	f := kafka.Classify(err)
	require.Equal(t, kafka.Permanent, f.Class, "broker message.max.bytes: %v", err)
	require.Equal(t, "message_too_large", f.Reason)

	_, _, err = conn.Producer.SendMessage(&sarama.ProducerMessage{Topic: kafka.TopicEvents, Value: sarama.ByteEncoder(make([]byte, 2000000))})
	require.Error(t, err)
	require.Equal(t, kafka.Permanent, kafka.Classify(err).Class, "producer MaxMessageBytes: %v", err)

	// The dead-letter producer takes what the event producer refused.
	_, _, err = conn.DeadLetter.SendMessage(&sarama.ProducerMessage{Topic: kafka.TopicDeadLetters, Value: sarama.ByteEncoder(make([]byte, 2000000))})
	require.NoError(t, err)
}

// TestSendBoundWithinBudget: the producer's timeouts and retries derived
// from a send budget never add up to more than it, for the leases the
// publisher accepts.
func TestSendBoundWithinBudget(t *testing.T) {
	t.Parallel()
	for _, budget := range []time.Duration{0, 600 * time.Millisecond, 3 * time.Second, 10 * time.Second} {
		c := kafka.SaramaConfig(kafka.Config{SendTimeout: budget}, 1<<20)
		want := budget
		if want == 0 {
			want = kafka.DefaultSendTimeout
		}
		bound := kafka.SendBound(c)
		require.LessOrEqual(t, bound, want, "budget %s", budget)
		require.Greater(t, bound, want*9/10, "budget %s mostly used", budget)
		require.Less(t, c.Producer.Timeout, c.Net.ReadTimeout)
		require.Positive(t, c.Metadata.Timeout)
	}
}
