package server

import (
	"bytes"
	"io"
	"math/bits"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
)

// gatewayJSON is the marshaler of every grpc-gateway route: grpc-gateway's
// JSONPb, except for the HealthKit push, the one large body, whose request is
// read by decodePush and whose answer is written by appendPushResponse.
//
// JSONPb decodes a body twice (encoding/json copies the first JSON value out
// of its own buffer of the body, then protojson parses that copy through
// protobuf reflection) and encodes through reflection too. decodePush reads
// the bytes the body guard already holds, once, straight into the generated
// structs, and only accepts what protojson accepts with the same result; it
// hands every other body (a syntax error, a duplicate field, a number in a
// string, a lone surrogate escape, anything after the object...) to JSONPb, so
// the errors, their messages and the leniencies of the route stay JSONPb's.
// appendPushResponse writes the same JSON protojson writes with
// UseProtoNames and EmitUnpopulated, and leaves to protojson any answer with
// a string that is not valid UTF-8 (protojson refuses those).
type gatewayJSON struct {
	*runtime.JSONPb
}

func newGatewayJSON() gatewayJSON {
	return gatewayJSON{JSONPb: &runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
	}}
}

// Marshal writes a HealthKit push's answer directly, anything else through JSONPb.
func (m gatewayJSON) Marshal(v any) ([]byte, error) {
	if resp, ok := v.(*ingestv1.PushHealthKitSamplesResponse); ok {
		if b, ok := appendPushResponse(make([]byte, 0, pushResponseSize(resp)), resp); ok {
			return b, nil
		}
	}
	return m.JSONPb.Marshal(v)
}

// NewDecoder decodes a HealthKit push from the body guard's buffer directly
// when it can, anything else through JSONPb.
func (m gatewayJSON) NewDecoder(r io.Reader) runtime.Decoder {
	return pushDecoderOf{r: r, pb: m.JSONPb}
}

type pushDecoderOf struct {
	r  io.Reader
	pb *runtime.JSONPb
}

func (d pushDecoderOf) Decode(v any) error {
	req, ok := v.(*ingestv1.PushHealthKitSamplesRequest)
	body, buffered := d.r.(*bufferedBody)
	if !ok || !buffered {
		return d.pb.NewDecoder(d.r).Decode(v)
	}
	b := body.take()
	if decodePush(b, req) {
		return nil
	}
	proto.Reset(req)
	return d.pb.NewDecoder(bytes.NewReader(b)).Decode(req)
}

// bufferedBody is a request body the body guard has read whole: handlers
// read it as any body, decoders that know it take its bytes without a copy.
type bufferedBody struct {
	b   []byte
	off int
}

func (b *bufferedBody) Read(p []byte) (int, error) {
	if b.off >= len(b.b) {
		return 0, io.EOF
	}
	n := copy(p, b.b[b.off:])
	b.off += n
	return n, nil
}

func (b *bufferedBody) Close() error { return nil }

// take returns the unread bytes and marks them read.
func (b *bufferedBody) take() []byte {
	rest := b.b[b.off:]
	b.off = len(b.b)
	return rest
}

// maxSkipDepth bounds the nesting of unknown fields' values decodePush skips;
// deeper ones go to JSONPb (protojson's own limit is 10000).
const maxSkipDepth = 64

// Bits of the fields seen in one object (protojson refuses a field given
// twice, under either of its names, even as null).
const (
	fSamples = 1 << iota
	fDeleted
	fUUID
	fType
	fValue
	fUnit
	fStart
	fEnd
	fSource
	fName
	fBundleID
	fDeviceModel
)

// pushParser reads one PushHealthKitSamplesRequest. Any method returning
// false means "not sure": the caller gives the body to JSONPb.
type pushParser struct {
	s string // the body; unescaped strings are substrings of it
	i int

	samples []ingestv1.HealthKitSample
	times   []timestamppb.Timestamp
	sources []ingestv1.HealthKitSource
}

// decodePush decodes body into req (which must be empty) and reports whether
// it did; when it did, protojson (with DiscardUnknown) decodes the first JSON
// value of body into the same message, and nothing but JSON whitespace
// follows that value.
func decodePush(body []byte, req *ingestv1.PushHealthKitSamplesRequest) bool {
	p := pushParser{s: string(body)}
	if !p.request(req) {
		return false
	}
	p.ws()
	return p.i == len(p.s)
}

func (p *pushParser) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// next skips whitespace and returns the next byte (0 at the end).
func (p *pushParser) next() byte {
	p.ws()
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

// consume skips whitespace and c.
func (p *pushParser) consume(c byte) bool {
	if p.next() != c {
		return false
	}
	p.i++
	return true
}

// object calls field for each member name of an object, positioned before its
// value (after the colon); field must read the value.
func (p *pushParser) object(field func(name string) bool) bool {
	if !p.consume('{') {
		return false
	}
	if p.next() == '}' {
		p.i++
		return true
	}
	for {
		if p.next() != '"' {
			return false
		}
		name, ok := p.str()
		if !ok || !p.consume(':') {
			return false
		}
		p.ws()
		if !field(name) {
			return false
		}
		switch p.next() {
		case ',':
			p.i++
		case '}':
			p.i++
			return true
		default:
			return false
		}
	}
}

// array calls elem for each element, positioned at it.
func (p *pushParser) array(elem func() bool) bool {
	if !p.consume('[') {
		return false
	}
	if p.next() == ']' {
		p.i++
		return true
	}
	for {
		p.ws()
		if !elem() {
			return false
		}
		switch p.next() {
		case ',':
			p.i++
		case ']':
			p.i++
			return true
		default:
			return false
		}
	}
}

// null reads a null if one is next.
func (p *pushParser) null() bool {
	if strings.HasPrefix(p.s[p.i:], "null") {
		p.i += 4
		return true
	}
	return false
}

// seen records field f in *set and refuses a second occurrence.
func seen(set *int, f int) bool {
	if *set&f != 0 {
		return false
	}
	*set |= f
	return true
}

// unknown handles a name that is no field: protojson resolves "[...]" names
// as extensions (refused here: JSONPb decides), and skips anything else.
func (p *pushParser) unknown(name string) bool {
	if strings.HasPrefix(name, "[") && strings.HasSuffix(name, "]") {
		return false
	}
	return p.skip(0)
}

func (p *pushParser) request(req *ingestv1.PushHealthKitSamplesRequest) bool {
	var set int
	return p.object(func(name string) bool {
		switch name {
		case "samples":
			if !seen(&set, fSamples) {
				return false
			}
			if p.null() {
				return true
			}
			samples := make([]*ingestv1.HealthKitSample, 0, 64)
			ok := p.array(func() bool {
				s := p.newSample()
				if !p.sample(s) {
					return false
				}
				samples = append(samples, s)
				return true
			})
			req.Samples = samples
			return ok
		case "deleted":
			if !seen(&set, fDeleted) {
				return false
			}
			if p.null() {
				return true
			}
			deleted := []string{}
			ok := p.array(func() bool {
				if p.i >= len(p.s) || p.s[p.i] != '"' {
					return false
				}
				u, ok := p.str()
				deleted = append(deleted, u)
				return ok
			})
			req.Deleted = deleted
			return ok
		}
		return p.unknown(name)
	})
}

// Samples, their timestamps and sources are allocated in slabs: a push holds
// thousands and lives as long as its request.
const slab = 128

func (p *pushParser) newSample() *ingestv1.HealthKitSample {
	if len(p.samples) == 0 {
		p.samples = make([]ingestv1.HealthKitSample, slab)
	}
	s := &p.samples[0]
	p.samples = p.samples[1:]
	return s
}

func (p *pushParser) newTime() *timestamppb.Timestamp {
	if len(p.times) == 0 {
		p.times = make([]timestamppb.Timestamp, 2*slab)
	}
	t := &p.times[0]
	p.times = p.times[1:]
	return t
}

func (p *pushParser) newSource() *ingestv1.HealthKitSource {
	if len(p.sources) == 0 {
		p.sources = make([]ingestv1.HealthKitSource, slab)
	}
	s := &p.sources[0]
	p.sources = p.sources[1:]
	return s
}

// stringField reads a string field's value (null leaves it empty).
func (p *pushParser) stringField(dst *string) bool {
	if p.null() {
		return true
	}
	if p.i >= len(p.s) || p.s[p.i] != '"' {
		return false
	}
	v, ok := p.str()
	*dst = v
	return ok
}

func (p *pushParser) sample(s *ingestv1.HealthKitSample) bool {
	var set int
	return p.object(func(name string) bool {
		switch name {
		case "uuid":
			return seen(&set, fUUID) && p.stringField(&s.Uuid)
		case "type":
			return seen(&set, fType) && p.stringField(&s.Type)
		case "unit":
			return seen(&set, fUnit) && p.stringField(&s.Unit)
		case "value":
			if !seen(&set, fValue) {
				return false
			}
			if p.null() {
				return true
			}
			v, ok := p.float()
			s.Value = v
			return ok
		case "start_date", "startDate":
			return seen(&set, fStart) && p.timestamp(&s.StartDate)
		case "end_date", "endDate":
			return seen(&set, fEnd) && p.timestamp(&s.EndDate)
		case "source":
			if !seen(&set, fSource) {
				return false
			}
			if p.null() {
				return true
			}
			s.Source = p.newSource()
			return p.source(s.Source)
		}
		return p.unknown(name)
	})
}

func (p *pushParser) source(src *ingestv1.HealthKitSource) bool {
	var set int
	return p.object(func(name string) bool {
		switch name {
		case "name":
			return seen(&set, fName) && p.stringField(&src.Name)
		case "bundle_id", "bundleId":
			return seen(&set, fBundleID) && p.stringField(&src.BundleId)
		case "device_model", "deviceModel":
			return seen(&set, fDeviceModel) && p.stringField(&src.DeviceModel)
		}
		return p.unknown(name)
	})
}

// Timestamps protojson accepts: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

// timestamp reads a google.protobuf.Timestamp as protojson does: an RFC 3339
// string parsed by time.Parse(time.RFC3339Nano), at most nine fractional
// digits, within the years 1 to 9999.
func (p *pushParser) timestamp(dst **timestamppb.Timestamp) bool {
	if p.null() {
		return true
	}
	if p.i >= len(p.s) || p.s[p.i] != '"' {
		return false
	}
	s, ok := p.str()
	if !ok {
		return false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return false
	}
	secs := t.Unix()
	if secs < minTimestampSeconds || secs > maxTimestampSeconds {
		return false
	}
	i := strings.LastIndexByte(s, '.')
	j := strings.LastIndexAny(s, "Z-+")
	if i >= 0 && j >= i && j-i > len(".999999999") {
		return false
	}
	ts := p.newTime()
	ts.Seconds, ts.Nanos = secs, int32(t.Nanosecond())
	*dst = ts
	return true
}

// float reads a JSON number as a double (strconv.ParseFloat, as protojson);
// a number out of range, or the strings protojson also accepts ("NaN",
// "1.5"...), are left to JSONPb.
func (p *pushParser) float() (float64, bool) {
	start := p.i
	if !p.number() {
		return 0, false
	}
	v, err := strconv.ParseFloat(p.s[start:p.i], 64)
	return v, err == nil
}

// number reads a number of the JSON grammar.
func (p *pushParser) number() bool {
	s, i := p.s, p.i
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		d := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == d {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		d := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == d {
			return false
		}
	}
	p.i = i
	return true
}

// str reads a string (p.s[p.i] is its quote). Strings without escapes are
// substrings of the body. Invalid UTF-8, control characters and surrogate
// escapes are left to JSONPb.
func (p *pushParser) str() (string, bool) {
	start := p.i + 1
	for i := start; i < len(p.s); {
		c := p.s[i]
		switch {
		case c == '"':
			p.i = i + 1
			return p.s[start:i], true
		case c == '\\':
			return p.escaped(start, i)
		case c < ' ':
			return "", false
		case c < utf8.RuneSelf:
			i++
		default:
			r, n := utf8.DecodeRuneInString(p.s[i:])
			if r == utf8.RuneError && n == 1 {
				return "", false
			}
			i += n
		}
	}
	return "", false
}

// escaped finishes a string with escapes, from its first backslash at i.
func (p *pushParser) escaped(start, i int) (string, bool) {
	out := make([]byte, 0, i-start+16)
	out = append(out, p.s[start:i]...)
	for i < len(p.s) {
		c := p.s[i]
		switch {
		case c == '"':
			p.i = i + 1
			return string(out), true
		case c == '\\':
			if i+1 >= len(p.s) {
				return "", false
			}
			switch e := p.s[i+1]; e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				if i+6 > len(p.s) {
					return "", false
				}
				r, ok := hex4(p.s[i+2 : i+6])
				if !ok {
					return "", false
				}
				if utf16.IsSurrogate(r) {
					// Only a pair is valid, as protojson reads it.
					if i+12 > len(p.s) || p.s[i+6] != '\\' || p.s[i+7] != 'u' {
						return "", false
					}
					r2, ok := hex4(p.s[i+8 : i+12])
					if r = utf16.DecodeRune(r, r2); !ok || r == utf8.RuneError {
						return "", false
					}
					i += 6
				}
				out = utf8.AppendRune(out, r)
				i += 4
			default:
				return "", false
			}
			i += 2
		case c < ' ':
			return "", false
		case c < utf8.RuneSelf:
			out = append(out, c)
			i++
		default:
			r, n := utf8.DecodeRuneInString(p.s[i:])
			if r == utf8.RuneError && n == 1 {
				return "", false
			}
			out = append(out, p.s[i:i+n]...)
			i += n
		}
	}
	return "", false
}

// hex4 reads the four hex digits of a \u escape.
func hex4(h string) (rune, bool) {
	var r rune
	for i := range len(h) {
		c := h[i]
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	return r, true
}

// skip reads any JSON value (an unknown field's), nested at most maxSkipDepth.
func (p *pushParser) skip(depth int) bool {
	if depth > maxSkipDepth || p.i >= len(p.s) {
		return false
	}
	switch c := p.s[p.i]; {
	case c == '{':
		return p.object(func(string) bool { return p.skip(depth + 1) })
	case c == '[':
		return p.array(func() bool { return p.skip(depth + 1) })
	case c == '"':
		_, ok := p.str()
		return ok
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	}
	for _, lit := range [...]string{"true", "false", "null"} {
		if strings.HasPrefix(p.s[p.i:], lit) {
			p.i += len(lit)
			return true
		}
	}
	return false
}

// pushResponseSize is about the size of the answer's JSON.
func pushResponseSize(resp *ingestv1.PushHealthKitSamplesResponse) int {
	n := 128
	for _, r := range resp.GetResults() {
		n += 64 + len(r.GetUuid()) + len(r.GetReason()) + len(r.GetMessage())
	}
	for _, d := range resp.GetDeletions() {
		n += 64 + len(d.GetUuid())
	}
	return n
}

// appendPushResponse appends resp as protojson writes it with UseProtoNames
// and EmitUnpopulated (fields in number order, every field present, enums by
// name); false when a string is not valid UTF-8, which protojson refuses.
func appendPushResponse(b []byte, resp *ingestv1.PushHealthKitSamplesResponse) ([]byte, bool) {
	ok := true
	b = append(b, `{"results":[`...)
	for i, r := range resp.GetResults() {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"uuid":`...)
		b, ok = appendJSONString(b, r.GetUuid(), ok)
		b = append(b, `,"status":`...)
		b = appendEnum(b, int32(r.GetStatus()), ingestv1.SampleStatus_name)
		b = append(b, `,"reason":`...)
		b, ok = appendJSONString(b, r.GetReason(), ok)
		b = append(b, `,"message":`...)
		b, ok = appendJSONString(b, r.GetMessage(), ok)
		b = append(b, '}')
	}
	b = append(b, `],"deletions":[`...)
	for i, d := range resp.GetDeletions() {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"uuid":`...)
		b, ok = appendJSONString(b, d.GetUuid(), ok)
		b = append(b, `,"status":`...)
		b = appendEnum(b, int32(d.GetStatus()), persistencev1.DeleteStatus_name)
		b = append(b, '}')
	}
	b = append(b, `],"accepted":`...)
	b = strconv.AppendInt(b, int64(resp.GetAccepted()), 10)
	b = append(b, `,"duplicates":`...)
	b = strconv.AppendInt(b, int64(resp.GetDuplicates()), 10)
	b = append(b, `,"rejected":`...)
	b = strconv.AppendInt(b, int64(resp.GetRejected()), 10)
	b = append(b, `,"skipped":`...)
	b = strconv.AppendInt(b, int64(resp.GetSkipped()), 10)
	b = append(b, '}')
	return b, ok
}

// appendEnum writes an enum value by name, or by number when it has none
// (as protojson does).
func appendEnum(b []byte, v int32, names map[int32]string) []byte {
	if name, ok := names[v]; ok {
		b = append(b, '"')
		b = append(b, name...)
		return append(b, '"')
	}
	return strconv.AppendInt(b, int64(v), 10)
}

// appendJSONString quotes s with protojson's escapes; ok turns false (and
// stays so) when s is not valid UTF-8.
func appendJSONString(b []byte, s string, ok bool) ([]byte, bool) {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= ' ' && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				ok = false
			}
			i += n
			continue
		}
		b = append(b, s[start:i]...)
		b = append(b, '\\')
		switch c {
		case '"', '\\':
			b = append(b, c)
		case '\b':
			b = append(b, 'b')
		case '\f':
			b = append(b, 'f')
		case '\n':
			b = append(b, 'n')
		case '\r':
			b = append(b, 'r')
		case '\t':
			b = append(b, 't')
		default:
			b = append(b, 'u')
			b = append(b, "0000"[1+(bits.Len32(uint32(c))-1)/4:]...)
			b = strconv.AppendUint(b, uint64(c), 16)
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"'), ok
}
