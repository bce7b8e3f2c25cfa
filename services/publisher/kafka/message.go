package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/pkg/truncate"
)

// CloudEvents Kafka binary binding headers (CloudEvents 1.0, Kafka protocol
// binding §3.2) plus the W3C trace context.
const (
	HeaderSpecVersion = "ce_specversion"
	HeaderID          = "ce_id"
	HeaderSource      = "ce_source"
	HeaderType        = "ce_type"
	HeaderTime        = "ce_time"
	HeaderContentType = "content-type"
	HeaderTraceParent = "traceparent"

	SpecVersion = "1.0"
	ContentType = "application/protobuf"
)

// Dead-letter headers, added to the original message's headers.
const (
	HeaderDLQReason        = "dlq_reason"
	HeaderDLQError         = "dlq_error"
	HeaderDLQAttempts      = "dlq_attempts"
	HeaderDLQFailedAt      = "dlq_failed_at"
	HeaderDLQOriginalTopic = "dlq_original_topic"
	// HeaderDLQValueOmitted is "true" when the value was too large even for
	// the dead-letter topic; the event stays in PostgreSQL under its ce_id.
	HeaderDLQValueOmitted = "dlq_value_omitted"
	// HeaderDLQReplayOf marks a replay record: an empty message on the
	// dead-letter topic saying the dead letter with this ce_id was
	// republished to its original topic (see package deadletter).
	HeaderDLQReplayOf  = "dlq_replay_of"
	HeaderDLQReplayAt  = "dlq_replayed_at"
	headerDLQPrefix    = "dlq_"
	sourcePrefix       = "/biobridge/"
	eventTypePrefix    = "biobridge.biometrics.event.v1."
	connectionTypePref = "biobridge.biometrics.connection.v1."
)

// ErrInvalidEntry marks an outbox entry that cannot become a message (no
// payload, or a payload that does not encode): retrying cannot help.
var ErrInvalidEntry = errors.New("invalid outbox entry")

// BuildMessage turns an outbox entry into the Kafka message of the contract:
// key = user id, value = the binary protobuf payload, CloudEvents headers,
// and the trace context of traceCtx (the producer span) as traceparent.
// A raw payload (event_bytes, connection_event_bytes) is the value as it
// is; a decoded one (event, connection_event: from a persistence service
// that predates raw_payload) is encoded. Either way the message is the same.
func BuildMessage(traceCtx context.Context, e *persistencev1.OutboxEntry) (*sarama.ProducerMessage, error) {
	switch p := e.GetPayload().(type) {
	case *persistencev1.OutboxEntry_EventBytes:
		return buildRaw(traceCtx, e, p.EventBytes, eventSchema, eventHeaderNums)
	case *persistencev1.OutboxEntry_ConnectionEventBytes:
		return buildRaw(traceCtx, e, p.ConnectionEventBytes, connectionSchema, connectionHeaderNums)
	}
	var (
		payload proto.Message
		id      string
		source  string
		ceType  string
		at      *timestamppb.Timestamp
		userID  string
	)
	switch p := e.GetPayload().(type) {
	case *persistencev1.OutboxEntry_Event:
		ev := p.Event
		payload, id, userID = ev, ev.GetEventId(), ev.GetUserId()
		source = sourcePrefix + sourceName(ev.GetSource())
		ceType = eventTypePrefix + operationName(ev.GetOperation())
		at = ev.GetOccurredAt()
	case *persistencev1.OutboxEntry_ConnectionEvent:
		ev := p.ConnectionEvent
		payload, id, userID = ev, ev.GetEventId(), ev.GetUserId()
		source = sourcePrefix + ev.GetVendor()
		ceType = connectionTypePref + connectionTypeName(ev.GetType())
		at = ev.GetOccurredAt()
	default:
		return nil, fmt.Errorf("%w: entry %d has no payload", ErrInvalidEntry, e.GetId())
	}
	if id == "" {
		return nil, fmt.Errorf("%w: entry %d has no event id", ErrInvalidEntry, e.GetId())
	}
	value, err := proto.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: encode entry %d: %w", ErrInvalidEntry, e.GetId(), err)
	}
	// ce_time is when the occurrence happened; the commit time stands in
	// when the payload has none.
	if at == nil {
		at = e.GetCreatedAt()
	}
	return message(traceCtx, e, value, []byte(userID), []byte(id), []byte(source), []byte(ceType), at.AsTime()), nil
}

// buildRaw is BuildMessage of a raw payload b of the type schema describes.
func buildRaw(traceCtx context.Context, e *persistencev1.OutboxEntry, b []byte, schemaOf func() (*wireSchema, error), nums headerNums) (*sarama.ProducerMessage, error) {
	schema, err := schemaOf()
	if err != nil { // the payload types changed beyond the scan: not the entry's fault
		return nil, err
	}
	h, err := scanPayload(b, schema, nums)
	if err != nil {
		return nil, fmt.Errorf("%w: decode entry %d: %w", ErrInvalidEntry, e.GetId(), err)
	}
	if len(h.id) == 0 {
		return nil, fmt.Errorf("%w: entry %d has no event id", ErrInvalidEntry, e.GetId())
	}
	var source, ceType []byte
	if nums.sourceEnum {
		source = eventSources.value(h.source)
		ceType = eventTypes.value(h.typ)
	} else {
		source = append(append(make([]byte, 0, len(sourcePrefix)+len(h.vendor)), sourcePrefix...), h.vendor...)
		ceType = connectionTypes.value(h.typ)
	}
	at := e.GetCreatedAt().AsTime()
	if h.hasAt {
		// As timestamppb.Timestamp.AsTime.
		at = time.Unix(h.atSeconds, int64(h.atNanos))
	}
	// The event id's header value shares the payload's bytes (neither is
	// ever written to).
	return message(traceCtx, e, b, h.user, h.id, source, ceType, at), nil
}

// message assembles the Kafka message of e: key = e's key, else userID.
func message(traceCtx context.Context, e *persistencev1.OutboxEntry, value, userID, id, source, ceType []byte, at time.Time) *sarama.ProducerMessage {
	key := e.GetKey()
	if key == "" {
		key = string(userID)
	}
	headers := make([]sarama.RecordHeader, 0, 7)
	headers = append(headers,
		sarama.RecordHeader{Key: keySpecVersion, Value: valueSpecVersion},
		sarama.RecordHeader{Key: keyID, Value: id},
		sarama.RecordHeader{Key: keySource, Value: source},
		sarama.RecordHeader{Key: keyType, Value: ceType},
		sarama.RecordHeader{Key: keyTime, Value: at.UTC().AppendFormat(make([]byte, 0, len(time.RFC3339Nano)), time.RFC3339Nano)},
		sarama.RecordHeader{Key: keyContentType, Value: valueContentType},
	)
	telemetry.Inject(traceCtx, func(k, v string) { headers = append(headers, header(k, v)) })
	return &sarama.ProducerMessage{
		Topic:   e.GetTopic(),
		Key:     sarama.StringEncoder(key),
		Value:   sarama.ByteEncoder(value),
		Headers: headers,
	}
}

// The header keys and constant values every message shares: sarama and
// DeadLetter only read them.
var (
	keySpecVersion   = []byte(HeaderSpecVersion)
	keyID            = []byte(HeaderID)
	keySource        = []byte(HeaderSource)
	keyType          = []byte(HeaderType)
	keyTime          = []byte(HeaderTime)
	keyContentType   = []byte(HeaderContentType)
	valueSpecVersion = []byte(SpecVersion)
	valueContentType = []byte(ContentType)
)

// enumHeader holds the header value of every known value of an enum;
// unknown values are rendered on the fly, as for known ones.
type enumHeader struct {
	known  map[int32][]byte
	render func(int32) string
}

func newEnumHeader(names map[int32]string, render func(int32) string) enumHeader {
	h := enumHeader{known: make(map[int32][]byte, len(names)), render: render}
	for v := range names {
		h.known[v] = []byte(render(v))
	}
	return h
}

func (h enumHeader) value(v int32) []byte {
	if b, ok := h.known[v]; ok {
		return b
	}
	return []byte(h.render(v))
}

var (
	eventSources = newEnumHeader(biometricsv1.Source_name, func(v int32) string {
		return sourcePrefix + sourceName(biometricsv1.Source(v))
	})
	eventTypes = newEnumHeader(biometricsv1.Operation_name, func(v int32) string {
		return eventTypePrefix + operationName(biometricsv1.Operation(v))
	})
	connectionTypes = newEnumHeader(biometricsv1.ConnectionEventType_name, func(v int32) string {
		return connectionTypePref + connectionTypeName(biometricsv1.ConnectionEventType(v))
	})
)

func header(k, v string) sarama.RecordHeader {
	return sarama.RecordHeader{Key: []byte(k), Value: []byte(v)}
}

// sourceName turns SOURCE_WHOOP into "whoop".
func sourceName(s biometricsv1.Source) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "SOURCE_"))
}

func operationName(o biometricsv1.Operation) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "OPERATION_"))
}

func connectionTypeName(t biometricsv1.ConnectionEventType) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "CONNECTION_EVENT_TYPE_"))
}

// Header returns the value of the first consumed header named key, or "".
func Header(headers []*sarama.RecordHeader, key string) string {
	for _, h := range headers {
		if h != nil && string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

// HeaderValue returns the value of the first produced header named key, or "".
func HeaderValue(headers []sarama.RecordHeader, key string) string {
	for _, h := range headers {
		if string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

// DeadLetterInfo says why a message is dead-lettered.
type DeadLetterInfo struct {
	// Reason is a stable snake_case reason, e.g. "message_too_large".
	Reason string
	// Error is the producer's error text (never PHI: sarama errors name
	// sizes, codes and topics, not message content).
	Error string
	// Attempts is how many times publishing was attempted.
	Attempts int
	// FailedAt is when the last attempt failed.
	FailedAt time.Time
	// OmitValue drops the value because even the dead-letter topic cannot
	// take it.
	OmitValue bool
}

// DeadLetter returns the dead-letter message for orig: the same key, value
// and headers (so a replay republishes exactly the original), plus headers
// saying why, when and after how many attempts it failed.
func DeadLetter(orig *sarama.ProducerMessage, info DeadLetterInfo) *sarama.ProducerMessage {
	headers := make([]sarama.RecordHeader, 0, len(orig.Headers)+6)
	for _, h := range orig.Headers {
		if !strings.HasPrefix(string(h.Key), headerDLQPrefix) {
			headers = append(headers, h)
		}
	}
	headers = append(headers,
		header(HeaderDLQReason, info.Reason),
		header(HeaderDLQError, truncate.UTF8(info.Error, 512)),
		header(HeaderDLQAttempts, strconv.Itoa(info.Attempts)),
		header(HeaderDLQFailedAt, info.FailedAt.UTC().Format(time.RFC3339Nano)),
		header(HeaderDLQOriginalTopic, orig.Topic),
	)
	value := orig.Value
	if info.OmitValue {
		value = nil
		headers = append(headers, header(HeaderDLQValueOmitted, "true"))
	}
	return &sarama.ProducerMessage{
		Topic:   TopicDeadLetters,
		Key:     orig.Key,
		Value:   value,
		Headers: headers,
	}
}

// ReplayMarker returns the record that marks the dead letter eventID as
// replayed. It carries the dead letter's key, so it lands in the same
// partition, after the dead letter.
func ReplayMarker(key []byte, eventID string, at time.Time) *sarama.ProducerMessage {
	return &sarama.ProducerMessage{
		Topic: TopicDeadLetters,
		Key:   sarama.ByteEncoder(key),
		Headers: []sarama.RecordHeader{
			header(HeaderDLQReplayOf, eventID),
			header(HeaderDLQReplayAt, at.UTC().Format(time.RFC3339Nano)),
		},
	}
}
