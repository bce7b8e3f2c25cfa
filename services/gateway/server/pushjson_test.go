package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
)

// pushBodies are push bodies the direct decoder must agree on with JSONPb:
// the app's own shape, protojson's leniencies (camelCase names, nulls,
// unknown fields, escapes) and its refusals.
var pushBodies = []string{
	`{"samples":[{"uuid":"A-1","type":"HKQuantityTypeIdentifierHeartRate","value":61,"unit":"count/min","start_date":"2026-12-04T06:00:00Z","end_date":"2026-12-04T06:00:00Z","source":{"name":"Apple Watch","bundle_id":"com.apple.health","device_model":"Watch7,1"}}]}`,
	`{"samples":[{"uuid":"A-1","type":"HKQuantityTypeIdentifierStepCount","value":1.5e3,"unit":"count","startDate":"2026-12-04T06:00:00.123456789+02:00","endDate":"2026-12-04T06:10:00.5-07:30","source":{"name":"iPhone","bundleId":"com.apple.health","deviceModel":"iPhone15,2"}}],"deleted":["B-1","B-2"]}`,
	` 	{ "samples" : [ { "uuid" : "A" , "value" : -0 } , { "uuid":"B", "value": 0.000001E-5 } ] , "deleted" : [ ] }` + "\n\r\t ",
	`{}`,
	`{"samples":[],"deleted":[]}`,
	`{"samples":null,"deleted":null}`,
	`{"samples":[{}]}`,
	`{"samples":[{"uuid":null,"type":null,"value":null,"unit":null,"start_date":null,"end_date":null,"source":null}]}`,
	`{"samples":[{"source":{}}]}`,
	`{"samples":[{"source":{"name":null,"bundle_id":null,"device_model":null}}]}`,
	`{"samples":[{"uuid":"a\"b\\c\/d\b\f\n\r\t\u00e9\u20AC\u0000","type":"caf\u00e9","unit":"\u00b0C"}]}`,
	`{"samples":[{"uuid":"Bob’s Watch ⌚ \ud83d\ude00"}]}`,
	`{"samples":[{"uuid":"\ud800"}]}`,
	`{"samples":[{"uuid":"\udc00\ud800"}]}`,
	`{"samples":[{"uuid":"\u12"}]}`,
	`{"samples":[{"uuid":"\x"}]}`,
	"{\"samples\":[{\"uuid\":\"\xff\"}]}",
	"{\"samples\":[{\"uuid\":\"\xed\xa0\x80\"}]}",
	"{\"samples\":[{\"uuid\":\"tab\there\"}]}",
	"{\"unknown\":\"\xff\"}",
	`{"samples":[{"uuid":"A","extra":{"a":[1,2,{"b":null}],"c":true,"d":false,"e":"x"},"more":[[[]]]}],"client":{"version":"1.2"},"n":-1.5e-7}`,
	`{"samples":[{"uuid":"A","uuid":"B"}]}`,
	`{"samples":[{"start_date":null,"startDate":"2026-12-04T06:00:00Z"}]}`,
	`{"samples":[{"source":{"bundle_id":"a","bundleId":"b"}}]}`,
	`{"samples":[],"samples":[]}`,
	`{"deleted":[],"deleted":null}`,
	`{"extra":1,"extra":2}`,
	`{"[biobridge.ext]":1}`,
	`{"[]":1}`,
	`{"samples":[{"value":"1.5"}]}`,
	`{"samples":[{"value":"NaN"}]}`,
	`{"samples":[{"value":"Infinity"}]}`,
	`{"samples":[{"value":"-Infinity"}]}`,
	`{"samples":[{"value":" 1"}]}`,
	`{"samples":[{"value":1e400}]}`,
	`{"samples":[{"value":-1e400}]}`,
	`{"samples":[{"value":1e-400}]}`,
	`{"samples":[{"value":01}]}`,
	`{"samples":[{"value":1.}]}`,
	`{"samples":[{"value":.5}]}`,
	`{"samples":[{"value":+1}]}`,
	`{"samples":[{"value":1e}]}`,
	`{"samples":[{"value":true}]}`,
	`{"samples":[{"value":[]}]}`,
	`{"samples":[{"uuid":1}]}`,
	`{"samples":[{"uuid":true}]}`,
	`{"samples":[null]}`,
	`{"samples":[1]}`,
	`{"samples":{}}`,
	`{"samples":"x"}`,
	`{"deleted":[null]}`,
	`{"deleted":[1]}`,
	`{"deleted":"x"}`,
	`{"samples":[{"source":[]}]}`,
	`{"samples":[{"source":"x"}]}`,
	`{"samples":[{"start_date":"2026-12-04T06:00:00"}]}`,
	`{"samples":[{"start_date":"2026-12-04 06:00:00Z"}]}`,
	`{"samples":[{"start_date":"2026-12-04t06:00:00z"}]}`,
	`{"samples":[{"start_date":"2026-12-04T06:00:00.1234567890Z"}]}`,
	`{"samples":[{"start_date":"2026-12-04T06:00:00.Z"}]}`,
	`{"samples":[{"start_date":"0000-12-31T23:59:59Z"}]}`,
	`{"samples":[{"start_date":"0001-01-01T00:00:00Z","end_date":"9999-12-31T23:59:59.999999999Z"}]}`,
	`{"samples":[{"start_date":"0001-01-01T00:00:00+01:00"}]}`,
	`{"samples":[{"start_date":"9999-12-31T23:59:59-01:00"}]}`,
	`{"samples":[{"start_date":"2026-02-30T00:00:00Z"}]}`,
	`{"samples":[{"start_date":"2026-12-04T24:00:00Z"}]}`,
	`{"samples":[{"start_date":"2026-12-04T06:00:60Z"}]}`,
	`{"samples":[{"start_date":1}]}`,
	`{"samples":[{"start_date":{"seconds":1}}]}`,
	``,
	`   `,
	`null`,
	`[]`,
	`"x"`,
	`1`,
	`{`,
	`{"samples":[`,
	`{"samples":[{"uuid":"A"}`,
	`{"samples":[{"uuid":"A"}]`,
	`{"samples":[{"uuid":"A",}]}`,
	`{"samples":[{"uuid":"A"},]}`,
	`{,}`,
	`{"a"}`,
	`{"a":}`,
	`{a:1}`,
	`{'a':1}`,
	`{"samples":[]} `,
	`{"samples":[]} {"samples":[{"uuid":"second"}]}`,
	`{"samples":[]}x`,
	`{"samples":[]}]`,
	"\ufeff{}",
	`{"a":nul}`,
	`{"a":nullx}`,
	`{"a":truefalse}`,
	`{"a":[1 2]}`,
	`{"a":{"b" 1}}`,
	`{"a":-}`,
	`{"a":--1}`,
	`{"a":1.5e+}`,
	`{"a":` + strings.Repeat("[", maxSkipDepth) + strings.Repeat("]", maxSkipDepth) + `}`,
	`{"a":` + strings.Repeat("[", maxSkipDepth+2) + strings.Repeat("]", maxSkipDepth+2) + `}`,
	`{"a":` + strings.Repeat(`{"b":`, 200) + `1` + strings.Repeat("}", 200) + `}`,
	`{"uu\u0069d":"x","s\u0061mples":[{"uu\u0069d":"y","start\u005fdate":"2026-12-04T06:00:00Z"}]}`,
}

// jsonpbDecode is the route's decoding before the direct decoder: JSONPb
// as the gateway configures it, from a reader of the body.
func jsonpbDecode(body []byte) (*ingestv1.PushHealthKitSamplesRequest, error) {
	var req ingestv1.PushHealthKitSamplesRequest
	err := newGatewayJSON().JSONPb.NewDecoder(bytes.NewReader(body)).Decode(&req)
	return &req, err
}

func wire(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}

// checkPushDecode holds the gateway's decoding of body to JSONPb's: when the
// direct decoder accepts a body, JSONPb accepts it with the same message, bit
// for bit; through the marshaler (the direct decoder with its fallback) the
// message and the error are JSONPb's, whatever the body.
func checkPushDecode(t *testing.T, body []byte) {
	t.Helper()
	want, wantErr := jsonpbDecode(body)

	var direct ingestv1.PushHealthKitSamplesRequest
	if decodePush(body, &direct) {
		if wantErr != nil && !errors.Is(wantErr, io.EOF) {
			t.Fatalf("body %q: direct decoder accepted it, JSONPb refused it: %v", body, wantErr)
		}
		if !bytes.Equal(wire(t, &direct), wire(t, want)) {
			t.Fatalf("body %q: direct decoder gave %v, JSONPb %v", body, &direct, want)
		}
	}

	var got ingestv1.PushHealthKitSamplesRequest
	gotErr := newGatewayJSON().NewDecoder(&bufferedBody{b: body}).Decode(&got)
	if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
		t.Fatalf("body %q: error %v, JSONPb's %v", body, gotErr, wantErr)
	}
	if !bytes.Equal(wire(t, &got), wire(t, want)) {
		t.Fatalf("body %q: decoded %v, JSONPb %v", body, &got, want)
	}
}

func TestPushDecoderAgreesWithJSONPb(t *testing.T) {
	t.Parallel()
	for _, body := range pushBodies {
		checkPushDecode(t, []byte(body))
	}
}

// TestPushDecoderTakesTheAppsBodies: the bodies the app sends go the direct
// way, not through the fallback (which would agree too, only slower).
func TestPushDecoderTakesTheAppsBodies(t *testing.T) {
	t.Parallel()
	for _, body := range pushBodies[:12] {
		var req ingestv1.PushHealthKitSamplesRequest
		if !decodePush([]byte(body), &req) {
			t.Errorf("direct decoder refused %s", body)
		}
	}
}

// TestPushDecoderLeavesOtherMessagesToJSONPb: other routes' requests, and
// bodies the guard did not buffer, decode through JSONPb.
func TestPushDecoderLeavesOtherMessagesToJSONPb(t *testing.T) {
	t.Parallel()
	var req ingestv1.DeleteUserDataRequest
	if err := newGatewayJSON().NewDecoder(&bufferedBody{b: []byte(`{"user_id":"u1","userId":"u2"}`)}).Decode(&req); err == nil {
		t.Fatal("duplicate field accepted")
	}
	if err := newGatewayJSON().NewDecoder(strings.NewReader(`{"user_id":"u1"}`)).Decode(&req); err != nil || req.GetUserId() != "u1" {
		t.Fatalf("got %v, %v", &req, err)
	}
	var push ingestv1.PushHealthKitSamplesRequest
	if err := newGatewayJSON().NewDecoder(strings.NewReader(`{"samples":[{"uuid":"A"}]}`)).Decode(&push); err != nil || push.GetSamples()[0].GetUuid() != "A" {
		t.Fatalf("got %v, %v", &push, err)
	}
}

func FuzzPushDecode(f *testing.F) {
	for _, body := range pushBodies {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkPushDecode(t, body)
	})
}

// checkPushEncode holds the direct encoding of an answer to JSONPb's: the
// same JSON values (key order and whitespace aside), or JSONPb's error.
func checkPushEncode(t *testing.T, resp *ingestv1.PushHealthKitSamplesResponse) {
	t.Helper()
	m := newGatewayJSON()
	want, wantErr := m.JSONPb.Marshal(resp)
	got, gotErr := m.Marshal(resp)
	if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
		t.Fatalf("%v: error %v, JSONPb's %v", resp, gotErr, wantErr)
	}
	if wantErr != nil {
		return
	}
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%v: direct encoding %s is not JSON: %v", resp, got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("JSONPb's %s: %v", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("direct encoding\n%s\nJSONPb's\n%s", got, want)
	}
	// And the answer reads back as the same message.
	var back ingestv1.PushHealthKitSamplesResponse
	if err := m.Unmarshal(got, &back); err != nil || !proto.Equal(&back, resp) {
		t.Fatalf("%s reads back as %v (%v), want %v", got, &back, err, resp)
	}
}

func TestPushResponseEncodingAgreesWithJSONPb(t *testing.T) {
	t.Parallel()
	for _, resp := range []*ingestv1.PushHealthKitSamplesResponse{
		{},
		{Results: []*ingestv1.SampleResult{{}}, Deletions: []*ingestv1.DeletionResult{{}}},
		{
			Results: []*ingestv1.SampleResult{
				{Uuid: "A-1", Status: ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED},
				{Uuid: "A-2", Status: ingestv1.SampleStatus_SAMPLE_STATUS_DUPLICATE},
				{Uuid: "A-3", Status: ingestv1.SampleStatus_SAMPLE_STATUS_REJECTED, Reason: "out_of_range", Message: `value "x" <out> of range & more`},
				{Uuid: "A-4", Status: ingestv1.SampleStatus_SAMPLE_STATUS_SKIPPED, Reason: "unknown_type", Message: "tab\there\nnewline \x00\x01\x1f\x7f é € 😀 \u2028 \\ /"},
				{Uuid: "A-5", Status: ingestv1.SampleStatus(42)},
			},
			Deletions: []*ingestv1.DeletionResult{
				{Uuid: "B-1", Status: persistencev1.DeleteStatus_DELETE_STATUS_DELETED},
				{Uuid: "B-2", Status: persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND},
				{Uuid: "B-3", Status: persistencev1.DeleteStatus(-7)},
			},
			Accepted: 1, Duplicates: 1, Rejected: 1, Skipped: 1,
		},
		{Accepted: 2147483647, Rejected: -2147483648},
		{Results: []*ingestv1.SampleResult{{Uuid: "bad \xff utf-8"}}},
		{Deletions: []*ingestv1.DeletionResult{{Uuid: "\xed\xa0\x80"}}},
	} {
		checkPushEncode(t, resp)
	}
}

func FuzzPushResponseEncode(f *testing.F) {
	f.Add("A-1", int32(1), "", "", "B-1", int32(1), int32(1))
	f.Add("A-1", int32(3), "out_of_range", "value \"x\"\n", "", int32(9), int32(-3))
	f.Add("\xff", int32(0), "\x00", "😀", "\xed\xa0\x80", int32(2), int32(0))
	f.Fuzz(func(t *testing.T, uuid string, status int32, reason, message, deleted string, deleteStatus, count int32) {
		checkPushEncode(t, &ingestv1.PushHealthKitSamplesResponse{
			Results:   []*ingestv1.SampleResult{{Uuid: uuid, Status: ingestv1.SampleStatus(status), Reason: reason, Message: message}},
			Deletions: []*ingestv1.DeletionResult{{Uuid: deleted, Status: persistencev1.DeleteStatus(deleteStatus)}},
			Accepted:  count, Duplicates: -count, Rejected: count / 2, Skipped: count % 7,
		})
	})
}
