package kafka_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/services/publisher/kafka"
)

// rawEntry is the entry of a persistence service asked for raw_payload;
// decodedEntry is the same entry from one that decodes the payload.
func rawEntry(connection bool, b []byte) *persistencev1.OutboxEntry {
	e := &persistencev1.OutboxEntry{Id: 7, Topic: kafka.TopicEvents, CreatedAt: timestamppb.New(time.Date(2026, 11, 20, 9, 0, 0, 5, time.UTC))}
	if connection {
		e.Topic = kafka.TopicConnections
		e.Payload = &persistencev1.OutboxEntry_ConnectionEventBytes{ConnectionEventBytes: b}
	} else {
		e.Payload = &persistencev1.OutboxEntry_EventBytes{EventBytes: b}
	}
	return e
}

func decodedEntry(raw *persistencev1.OutboxEntry, m proto.Message) *persistencev1.OutboxEntry {
	e := proto.CloneOf(raw)
	switch m := m.(type) {
	case *biometricsv1.BiometricEvent:
		e.Payload = &persistencev1.OutboxEntry_Event{Event: m}
	case *biometricsv1.ConnectionEvent:
		e.Payload = &persistencev1.OutboxEntry_ConnectionEvent{ConnectionEvent: m}
	}
	return e
}

func encode(t testing.TB, v sarama.Encoder) []byte {
	t.Helper()
	b, err := v.Encode()
	require.NoError(t, err)
	return b
}

// requireSameMessage: the messages of the raw and the decoded entry agree
// in topic, key and every header; it returns their values.
func requireSameMessage(t testing.TB, raw, decoded *sarama.ProducerMessage) (rawValue, decodedValue []byte) {
	t.Helper()
	require.Equal(t, decoded.Topic, raw.Topic)
	require.Equal(t, string(encode(t, decoded.Key)), string(encode(t, raw.Key)))
	require.Equal(t, decoded.Headers, raw.Headers)
	return encode(t, raw.Value), encode(t, decoded.Value)
}

// randomString mixes ASCII, multi-byte UTF-8 and the empty string.
func randomString(r *rand.Rand) string {
	alphabet := []rune("abcXYZ019-_ éü€😀\u0000")
	n := r.IntN(12)
	if r.IntN(5) == 0 {
		n = 0
	}
	s := make([]rune, n)
	for i := range s {
		s[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(s)
}

func randomTimestamp(r *rand.Rand) *timestamppb.Timestamp {
	switch r.IntN(4) {
	case 0:
		return nil
	case 1:
		return &timestamppb.Timestamp{} // present, all zero
	case 2: // out of range too: AsTime and the scan must agree
		return &timestamppb.Timestamp{Seconds: r.Int64() - r.Int64(), Nanos: r.Int32() - r.Int32()}
	}
	return timestamppb.New(time.Date(2020+r.IntN(10), time.Month(1+r.IntN(12)), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), r.IntN(1e9), time.UTC))
}

func randomEnum(r *rand.Rand, known int32) int32 {
	if r.IntN(6) == 0 {
		return r.Int32() - r.Int32() // unknown values, negative ones too
	}
	return r.Int32N(known)
}

func randomEvent(r *rand.Rand) *biometricsv1.BiometricEvent {
	ev := &biometricsv1.BiometricEvent{
		EventId: "ev-" + randomString(r), UserId: randomString(r),
		Source: biometricsv1.Source(randomEnum(r, 5)), Kind: randomString(r), VendorRecordId: randomString(r),
		Operation: biometricsv1.Operation(randomEnum(r, 3)), Version: r.Int64() - r.Int64(),
		OccurredAt: randomTimestamp(r), ReceivedAt: randomTimestamp(r),
	}
	for range r.IntN(4) {
		rd := &biometricsv1.Reading{Metric: randomString(r), Value: r.NormFloat64(), Unit: randomString(r),
			ObservedAt: randomTimestamp(r), StartTime: randomTimestamp(r)}
		if r.IntN(2) == 0 {
			rd.Device = &biometricsv1.Device{Name: randomString(r), Model: randomString(r), BundleId: randomString(r)}
		}
		ev.Readings = append(ev.Readings, rd)
	}
	return ev
}

func randomConnectionEvent(r *rand.Rand) *biometricsv1.ConnectionEvent {
	return &biometricsv1.ConnectionEvent{
		EventId: "ev-" + randomString(r), UserId: randomString(r), Vendor: randomString(r),
		Type: biometricsv1.ConnectionEventType(randomEnum(r, 8)), OccurredAt: randomTimestamp(r),
		Reason: randomString(r), Sequence: r.Int64(),
	}
}

// TestRawPayloadMessageIsTheDecodedOnes: for payloads encoded as
// persistence stores them (proto.Marshal), the message of the forwarded
// bytes is byte for byte the message of the decoded payload: same value,
// key and headers (ce_id, ce_source, ce_type, ce_time, traceparent ...).
func TestRawPayloadMessageIsTheDecodedOnes(t *testing.T) {
	t.Parallel()
	ctx := telemetry.Extract(t.Context(), func(k string) string {
		if k == "traceparent" {
			return "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		}
		return ""
	}, nil)
	r := rand.New(rand.NewPCG(17, 1))
	for i := range 2000 {
		connection := i%2 == 1
		var m proto.Message = randomEvent(r)
		if connection {
			m = randomConnectionEvent(r)
		}
		b, err := proto.Marshal(m)
		require.NoError(t, err)
		raw := rawEntry(connection, b)
		if i%3 == 0 {
			raw.Key = "user-key"
		}
		rawMsg, err := kafka.BuildMessage(ctx, raw)
		require.NoError(t, err, "%v", m)
		decMsg, err := kafka.BuildMessage(ctx, decodedEntry(raw, m))
		require.NoError(t, err)
		rawValue, decValue := requireSameMessage(t, rawMsg, decMsg)
		require.Equal(t, decValue, rawValue, "the value is today's proto.Marshal of the decoded payload")
		require.Equal(t, b, rawValue, "the stored bytes, untouched")
	}
}

// TestRawPayloadNonCanonical: bytes that decode but are not what
// proto.Marshal writes (repeated fields that merge, unknown fields, a known
// field in another wire type) give the headers of what they decode to; the
// value is still the bytes as stored, a valid encoding of the same message.
func TestRawPayloadNonCanonical(t *testing.T) {
	t.Parallel()
	base := &biometricsv1.BiometricEvent{
		EventId: "ev-1", UserId: "u-1", Source: biometricsv1.Source_SOURCE_OURA,
		Operation:  biometricsv1.Operation_OPERATION_UPSERT,
		OccurredAt: &timestamppb.Timestamp{Seconds: 1_700_000_000, Nanos: 5},
	}
	b, err := proto.Marshal(base)
	require.NoError(t, err)
	later, err := proto.Marshal(&biometricsv1.BiometricEvent{
		EventId: "ev-2", Operation: biometricsv1.Operation_OPERATION_DELETE,
		OccurredAt: &timestamppb.Timestamp{Nanos: 9}, // merges: seconds stay
	})
	require.NoError(t, err)
	cases := map[string][]byte{
		"merged with a later encoding": append(append([]byte{}, b...), later...),
		"unknown fields": protowire.AppendVarint(protowire.AppendTag(
			protowire.AppendString(protowire.AppendTag(append([]byte{}, b...), 99, protowire.BytesType), "x"),
			100, protowire.VarintType), 3),
		"event id as a varint is an unknown field": protowire.AppendVarint(protowire.AppendTag(append([]byte{}, b...), 1, protowire.VarintType), 1),
		"occurred_at as a varint is an unknown field": protowire.AppendVarint(protowire.AppendTag(
			protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "ev-3"), 8, protowire.VarintType), 1),
		"unknown group":        protowire.AppendTag(protowire.AppendTag(append([]byte{}, b...), 50, protowire.StartGroupType), 50, protowire.EndGroupType),
		"explicit zero source": protowire.AppendVarint(protowire.AppendTag(append([]byte{}, b...), 3, protowire.VarintType), 0),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ev := &biometricsv1.BiometricEvent{}
			require.NoError(t, proto.Unmarshal(b, ev))
			raw := rawEntry(false, b)
			rawMsg, err := kafka.BuildMessage(t.Context(), raw)
			require.NoError(t, err)
			decMsg, err := kafka.BuildMessage(t.Context(), decodedEntry(raw, ev))
			require.NoError(t, err)
			rawValue, _ := requireSameMessage(t, rawMsg, decMsg)
			require.Equal(t, b, rawValue)
		})
	}
}

// TestRawPayloadInvalid: bytes proto.Unmarshal refuses, or an event
// without id, are an invalid entry (dead-lettered at once), as decoded.
func TestRawPayloadInvalid(t *testing.T) {
	t.Parallel()
	valid, err := proto.Marshal(&biometricsv1.BiometricEvent{EventId: "ev-1", UserId: "u"})
	require.NoError(t, err)
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
	}
	msg := func(num protowire.Number, inner []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), inner)
	}
	cases := map[string]struct {
		connection bool
		b          []byte
	}{
		"truncated":                        {b: valid[:len(valid)-1]},
		"bad tag":                          {b: append(append([]byte{}, valid...), 0x80)},
		"field number 0":                   {b: append(append([]byte{}, valid...), 0x00, 0x00)},
		"end group without start":          {b: protowire.AppendTag(append([]byte{}, valid...), 20, protowire.EndGroupType)},
		"reserved wire type":               {b: append(append([]byte{}, valid...), 0x0e)},
		"event id not UTF-8":               {b: str(1, "ev-\xff")},
		"metric of a reading not UTF-8":    {b: append(str(1, "ev-1"), msg(10, str(1, "hr\xc3"))...)},
		"device of a reading not UTF-8":    {b: append(str(1, "ev-1"), msg(10, msg(6, str(1, "\xed\xa0\x80")))...)},
		"timestamp truncated":              {b: append(str(1, "ev-1"), msg(8, []byte{0x08})...)},
		"no event id":                      {b: str(2, "user")},
		"empty":                            {b: nil},
		"connection: vendor not UTF-8":     {connection: true, b: append(str(1, "ev-1"), str(3, "\xff")...)},
		"connection: no event id":          {connection: true, b: str(3, "oura")},
		"connection: unterminated group":   {connection: true, b: append(str(1, "ev-1"), protowire.AppendTag(nil, 30, protowire.StartGroupType)...)},
		"connection: reason not UTF-8":     {connection: true, b: append(str(1, "ev-1"), str(6, "\xc0\xaf")...)},
		"connection: overlong varint type": {connection: true, b: append(str(1, "ev-1"), 0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := kafka.BuildMessage(t.Context(), rawEntry(c.connection, c.b))
			require.ErrorIs(t, err, kafka.ErrInvalidEntry)
			f := kafka.Classify(err)
			require.Equal(t, kafka.Permanent, f.Class)
			require.Equal(t, "invalid_entry", f.Reason)
		})
	}
}

// FuzzRawPayload holds the scan of raw payloads to proto.Unmarshal: the
// raw entry builds a message exactly when the decoded one does, with the
// same key and headers, and its value is the bytes untouched.
func FuzzRawPayload(f *testing.F) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 4 {
		b, _ := proto.Marshal(randomEvent(r))
		f.Add(false, b)
		b, _ = proto.Marshal(randomConnectionEvent(r))
		f.Add(true, b)
	}
	f.Fuzz(func(t *testing.T, connection bool, b []byte) {
		var m proto.Message = &biometricsv1.BiometricEvent{}
		if connection {
			m = &biometricsv1.ConnectionEvent{}
		}
		raw := rawEntry(connection, b)
		rawMsg, rawErr := kafka.BuildMessage(context.Background(), raw)
		if err := proto.Unmarshal(b, m); err != nil {
			require.ErrorIs(t, rawErr, kafka.ErrInvalidEntry, "proto.Unmarshal: %v", err)
			return
		}
		decMsg, decErr := kafka.BuildMessage(context.Background(), decodedEntry(raw, m))
		if decErr != nil {
			require.ErrorIs(t, decErr, kafka.ErrInvalidEntry)
			require.ErrorIs(t, rawErr, kafka.ErrInvalidEntry)
			return
		}
		require.NoError(t, rawErr)
		rawValue, _ := requireSameMessage(t, rawMsg, decMsg)
		require.Equal(t, b, rawValue)
	})
}

// BenchmarkBuildMessage: a bench event (one reading) as the relay gets it
// from persistence, raw (forwarded) or decoded (encoded again).
func BenchmarkBuildMessage(b *testing.B) {
	at := timestamppb.New(time.Date(2026, 11, 20, 8, 0, 0, 123456789, time.UTC))
	ev := &biometricsv1.BiometricEvent{
		EventId: "0b8c1f7e-1d2a-4c3b-9e8f-5a6b7c8d9e0f", UserId: "bench-user-0001", Source: biometricsv1.Source_SOURCE_WHOOP,
		Kind: "sample", VendorRecordId: "bench-user-0001-1", Operation: biometricsv1.Operation_OPERATION_UPSERT, Version: 1,
		OccurredAt: at, ReceivedAt: at,
		Readings: []*biometricsv1.Reading{{Metric: "heart_rate_bpm", Value: 61, Unit: "bpm", ObservedAt: at}},
	}
	raw, err := proto.Marshal(ev)
	require.NoError(b, err)
	entries := map[string]*persistencev1.OutboxEntry{
		"raw":     rawEntry(false, raw),
		"decoded": decodedEntry(rawEntry(false, raw), ev),
	}
	for _, name := range []string{"raw", "decoded"} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := kafka.BuildMessage(context.Background(), entries[name]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
