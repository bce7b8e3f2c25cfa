package kafka

import (
	"errors"
	"fmt"
	"sync"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
)

// A raw payload (OutboxEntry event_bytes or connection_event_bytes) is
// forwarded as the Kafka value untouched. Decoding it in full only to read
// the five fields the headers need, and encoding it again, was about a
// fifth of the publisher's CPU; instead one protowire pass over the bytes
// checks that proto.Unmarshal would accept them (the same wire-format and
// UTF-8 rules, field by field, from the message's descriptor) and picks
// up the header fields on the way, with proto.Unmarshal's semantics: the
// last occurrence of a scalar wins, occurrences of a message merge, a known
// field with an unexpected wire type is an unknown field. A differential
// test and a fuzz target hold it to proto.Unmarshal.

// errMalformed is what the scan reports for bytes proto.Unmarshal rejects.
var errMalformed = errors.New("payload is not a valid encoding")

// wireField is what the scan knows of one field of a message type.
type wireField struct {
	kind     protoreflect.Kind
	list     bool
	utf8     bool        // a string whose value must be valid UTF-8
	msg      *wireSchema // the message type of a message field
	declared bool
}

// wireSchema is a message type's fields by number.
type wireSchema struct {
	fields []wireField
}

func (s *wireSchema) field(num protowire.Number) *wireField {
	if int(num) < len(s.fields) && s.fields[num].declared {
		return &s.fields[num]
	}
	return nil
}

// newWireSchema builds the schema of md and of the message types it uses.
// It refuses what the scan does not implement (groups, proto2 or editions
// semantics); TestRawPayloadSchemasBuild holds the payload types to that.
func newWireSchema(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]*wireSchema) (*wireSchema, error) {
	if s, ok := seen[md.FullName()]; ok {
		return s, nil
	}
	s := &wireSchema{}
	seen[md.FullName()] = s
	if md.Syntax() != protoreflect.Proto3 {
		return nil, fmt.Errorf("raw payload scan: %s is not proto3", md.FullName())
	}
	fds := md.Fields()
	maxNum := protowire.Number(0)
	for i := range fds.Len() {
		maxNum = max(maxNum, fds.Get(i).Number())
	}
	if maxNum > 1024 {
		return nil, fmt.Errorf("raw payload scan: %s has field numbers too large for a dense table", md.FullName())
	}
	s.fields = make([]wireField, maxNum+1)
	for i := range fds.Len() {
		fd := fds.Get(i)
		f := wireField{kind: fd.Kind(), list: fd.IsList(), declared: true}
		switch fd.Kind() {
		case protoreflect.GroupKind:
			return nil, fmt.Errorf("raw payload scan: %s is a group", fd.FullName())
		case protoreflect.StringKind:
			f.utf8 = true // proto3: proto.Unmarshal validates UTF-8
		case protoreflect.MessageKind:
			var err error
			if f.msg, err = newWireSchema(fd.Message(), seen); err != nil {
				return nil, err
			}
		}
		s.fields[fd.Number()] = f
	}
	return s, nil
}

// schemaOf builds m's schema once, on first use.
func schemaOf(m proto.Message) func() (*wireSchema, error) {
	return sync.OnceValues(func() (*wireSchema, error) {
		return newWireSchema(m.ProtoReflect().Descriptor(), map[protoreflect.FullName]*wireSchema{})
	})
}

var (
	eventSchema      = schemaOf((*biometricsv1.BiometricEvent)(nil))
	connectionSchema = schemaOf((*biometricsv1.ConnectionEvent)(nil))
)

// headerNums are the field numbers of a payload type the headers come from.
type headerNums struct {
	id, user, source, typ, at protowire.Number
	// sourceEnum: the source is an enum (BiometricEvent.source), else a
	// string (ConnectionEvent.vendor).
	sourceEnum bool
}

var (
	eventHeaderNums      = headerNums{id: 1, user: 2, source: 3, typ: 6, at: 8, sourceEnum: true}
	connectionHeaderNums = headerNums{id: 1, user: 2, source: 3, typ: 4, at: 5}
)

// headerFields are the payload fields the message needs besides its value.
type headerFields struct {
	id, user, vendor []byte
	source, typ      int32 // source: the enum of a BiometricEvent
	hasAt            bool
	atSeconds        int64
	atNanos          int32
}

// scanPayload checks that b is a valid encoding of the message type of
// schema and returns the fields named by nums.
func scanPayload(b []byte, schema *wireSchema, nums headerNums) (headerFields, error) {
	var h headerFields
	err := walk(b, schema, 0, &nums, &h)
	return h, err
}

// walk checks the fields of one message; at the top (nums not nil) it
// records the header fields in h.
func walk(b []byte, s *wireSchema, depth int, nums *headerNums, h *headerFields) error {
	if depth > protowire.DefaultRecursionLimit {
		return errMalformed
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber || typ == protowire.EndGroupType {
			return errMalformed
		}
		b = b[n:]
		f := s.field(num)
		n = -1
		if f != nil {
			var err error
			n, err = consumeKnown(b, f, typ, depth, num, nums, h)
			if err != nil {
				return err
			}
		}
		if n < 0 {
			// Not declared, or not in the declared field's wire type:
			// proto.Unmarshal keeps it as an unknown field.
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errMalformed
			}
		}
		b = b[n:]
	}
	return nil
}

// consumeKnown consumes the value of the declared field f in wire type typ.
// It returns n < 0 (and no error) when typ is not one f accepts.
func consumeKnown(b []byte, f *wireField, typ protowire.Type, depth int, num protowire.Number, nums *headerNums, h *headerFields) (int, error) {
	want := wireTypeOf(f.kind)
	if typ != want {
		if !f.list || typ != protowire.BytesType || want == protowire.BytesType {
			return -1, nil
		}
		// Packed repeated scalars.
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return 0, errMalformed
		}
		for len(v) > 0 {
			m := consumeScalar(v, want)
			if m < 0 {
				return 0, errMalformed
			}
			v = v[m:]
		}
		return n, nil
	}
	if want != protowire.BytesType {
		if nums != nil && want == protowire.VarintType && (num == nums.typ || (nums.sourceEnum && num == nums.source)) {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return 0, errMalformed
			}
			if num == nums.typ {
				h.typ = int32(v)
			} else {
				h.source = int32(v)
			}
			return n, nil
		}
		n := consumeScalar(b, want)
		if n < 0 {
			return 0, errMalformed
		}
		return n, nil
	}
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return 0, errMalformed
	}
	switch {
	case f.utf8 && !utf8.Valid(v):
		return 0, errMalformed
	case f.msg != nil:
		if err := walk(v, f.msg, depth+1, nil, nil); err != nil {
			return 0, err
		}
	}
	if nums != nil {
		switch num {
		case nums.id:
			h.id = v
		case nums.user:
			h.user = v
		case nums.source:
			h.vendor = v
		case nums.at:
			// A Timestamp, already checked: later occurrences merge into
			// it field by field.
			h.hasAt = true
			readTimestamp(v, h)
		}
	}
	return n, nil
}

// readTimestamp merges the seconds (1) and nanos (2) of a valid encoding
// of a google.protobuf.Timestamp into h.
func readTimestamp(b []byte, h *headerFields) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		b = b[n:]
		if typ == protowire.VarintType && (num == 1 || num == 2) {
			v, m := protowire.ConsumeVarint(b)
			if num == 1 {
				h.atSeconds = int64(v)
			} else {
				h.atNanos = int32(v)
			}
			b = b[m:]
			continue
		}
		b = b[protowire.ConsumeFieldValue(num, typ, b):]
	}
}

func consumeScalar(b []byte, typ protowire.Type) int {
	switch typ {
	case protowire.VarintType:
		_, n := protowire.ConsumeVarint(b)
		return n
	case protowire.Fixed32Type:
		_, n := protowire.ConsumeFixed32(b)
		return n
	case protowire.Fixed64Type:
		_, n := protowire.ConsumeFixed64(b)
		return n
	}
	return -1
}

// wireTypeOf is the wire type of a single value of kind k.
func wireTypeOf(k protoreflect.Kind) protowire.Type {
	switch k {
	case protoreflect.BoolKind, protoreflect.EnumKind, protoreflect.Int32Kind, protoreflect.Sint32Kind,
		protoreflect.Uint32Kind, protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Uint64Kind:
		return protowire.VarintType
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return protowire.Fixed32Type
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		return protowire.Fixed64Type
	default: // string, bytes, message
		return protowire.BytesType
	}
}
