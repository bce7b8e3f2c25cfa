package webhook

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/apperr"
)

func TestParseWhoop(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		body      string
		want      WhoopEvent
		supported bool
		problem   string // substring of the 400 message; "" = valid
	}{
		{"documented body", string(whoopBody), WhoopEvent{UserID: 10235, ID: "ecfc6a15-4661-442f-a9a4-f160dd7afae8", Type: "sleep.updated", TraceID: "e369c784-5100-49e8-8098-75d35c47b31b"}, true, ""},
		{"recovery names the sleep", `{"user_id":1,"id":"s-1","type":"recovery.updated","trace_id":"t"}`, WhoopEvent{UserID: 1, ID: "s-1", Type: "recovery.updated", TraceID: "t"}, true, ""},
		{"deleted workout", `{"user_id":1,"id":"w","type":"workout.deleted","trace_id":"t"}`, WhoopEvent{UserID: 1, ID: "w", Type: "workout.deleted", TraceID: "t"}, true, ""},
		{"user id as a string", `{"user_id":"42","id":"x","type":"sleep.deleted","trace_id":"t"}`, WhoopEvent{UserID: 42, ID: "x", Type: "sleep.deleted", TraceID: "t"}, true, ""},
		{"unknown fields ignored", `{"user_id":1,"id":"x","type":"sleep.updated","trace_id":"t","new_field":{"a":1}}`, WhoopEvent{UserID: 1, ID: "x", Type: "sleep.updated", TraceID: "t"}, true, ""},
		{"unknown type parses but is not supported", `{"user_id":1,"id":"x","type":"cycle.updated","trace_id":"t"}`, WhoopEvent{UserID: 1, ID: "x", Type: "cycle.updated", TraceID: "t"}, false, ""},
		{"no trace id", `{"user_id":1,"id":"x","type":"sleep.updated"}`, WhoopEvent{UserID: 1, ID: "x", Type: "sleep.updated"}, true, ""},
		{"empty body", ``, WhoopEvent{}, false, "empty"},
		{"array", `[1,2]`, WhoopEvent{}, false, "JSON object"},
		{"truncated", `{"user_id":1,"id":"x"`, WhoopEvent{}, false, "not valid JSON"},
		{"trailing data", `{"user_id":1,"id":"x","type":"sleep.updated"} {}`, WhoopEvent{}, false, "after the JSON object"},
		{"missing user id", `{"id":"x","type":"sleep.updated"}`, WhoopEvent{}, false, "user_id is required"},
		{"user id zero", `{"user_id":0,"id":"x","type":"sleep.updated"}`, WhoopEvent{}, false, "positive"},
		{"user id fraction", `{"user_id":1.5,"id":"x","type":"sleep.updated"}`, WhoopEvent{}, false, "positive integer"},
		{"user id object", `{"user_id":{},"id":"x","type":"sleep.updated"}`, WhoopEvent{}, false, "positive integer"},
		{"id wrong type", `{"user_id":1,"id":7,"type":"sleep.updated"}`, WhoopEvent{}, false, "wrong type"},
		{"missing id", `{"user_id":1,"type":"sleep.updated"}`, WhoopEvent{}, false, "id is required"},
		{"type without action", `{"user_id":1,"id":"x","type":"sleep"}`, WhoopEvent{}, false, "<resource>.<action>"},
		{"id with a newline", `{"user_id":1,"id":"x\ny","type":"sleep.updated"}`, WhoopEvent{}, false, "control characters"},
		{"overlong id", `{"user_id":1,"id":"` + strings.Repeat("a", MaxIDLen+1) + `","type":"sleep.updated"}`, WhoopEvent{}, false, "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := ParseWhoop([]byte(tt.body))
			if tt.problem != "" {
				require.Error(t, err)
				assert.Equal(t, apperr.Invalid, apperr.CodeOf(err), "a malformed body is a 400")
				assert.Equal(t, ReasonMalformedBody, apperr.ReasonOf(err))
				assert.Contains(t, err.Error(), tt.problem)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, ev)
			assert.Equal(t, tt.supported, ev.Supported())
		})
	}
}

func TestWhoopDeliveryID(t *testing.T) {
	t.Parallel()
	a := WhoopEvent{UserID: 1, ID: "x", Type: "sleep.updated", TraceID: "trace"}
	assert.Equal(t, "trace", a.DeliveryID("1700000000000"), "trace_id is the delivery id")
	assert.Equal(t, "trace", a.DeliveryID("1700000009999"), "a retry of a delivery with trace_id is a duplicate whatever its timestamp")
	b := WhoopEvent{UserID: 1, ID: "x", Type: "sleep.updated"}
	c := WhoopEvent{UserID: 1, ID: "x", Type: "sleep.deleted"}
	assert.Equal(t, b.DeliveryID("1700000000000"), b.DeliveryID("1700000000000"))
	assert.NotEqual(t, b.DeliveryID("1700000000000"), c.DeliveryID("1700000000000"), "without trace_id, different events differ")
	assert.NotEqual(t, b.DeliveryID("1700000000000"), b.DeliveryID("1700000360000"),
		"without trace_id, a later *.updated of the same record is not dropped as a duplicate")
	assert.True(t, strings.HasPrefix(b.DeliveryID("1700000000000"), "sha256:"))
	assert.Equal(t, "sleep", a.Resource())
	assert.Equal(t, "updated", a.Action())
	assert.Equal(t, "1", a.VendorUserID())
}

func TestParseOura(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		body    string
		want    OuraEvent
		problem string
	}{
		{"documented body", string(ouraBody), OuraEvent{EventType: "create", DataType: "sleep", ObjectID: "8f9a5221-639e-4a85-81cb-4065ef23f979", EventTime: "2026-11-20T07:59:00+01:00", UserID: "a1b2c3"}, ""},
		{"delete", `{"event_type":"delete","data_type":"daily_readiness","object_id":"d","event_time":"2026-11-20T07:59:00Z","user_id":"u"}`, OuraEvent{EventType: "delete", DataType: "daily_readiness", ObjectID: "d", EventTime: "2026-11-20T07:59:00Z", UserID: "u"}, ""},
		{"zone-less time read as UTC", `{"event_type":"update","data_type":"sleep","object_id":"d","event_time":"2026-11-20T07:59:00.123","user_id":"u"}`, OuraEvent{EventType: "update", DataType: "sleep", ObjectID: "d", EventTime: "2026-11-20T07:59:00.123", UserID: "u"}, ""},
		{"unknown event type", `{"event_type":"upsert","data_type":"sleep","object_id":"d","event_time":"2026-11-20T07:59:00Z","user_id":"u"}`, OuraEvent{}, "create, update or delete"},
		{"missing object id", `{"event_type":"create","data_type":"sleep","event_time":"2026-11-20T07:59:00Z","user_id":"u"}`, OuraEvent{}, "object_id is required"},
		{"missing user", `{"event_type":"create","data_type":"sleep","object_id":"d","event_time":"2026-11-20T07:59:00Z"}`, OuraEvent{}, "user_id is required"},
		{"bad time", `{"event_type":"create","data_type":"sleep","object_id":"d","event_time":"yesterday","user_id":"u"}`, OuraEvent{}, "ISO 8601"},
		{"data type with a slash", `{"event_type":"create","data_type":"../sleep","object_id":"d","event_time":"2026-11-20T07:59:00Z","user_id":"u"}`, OuraEvent{}, "short identifier"},
		{"user id number", `{"event_type":"create","data_type":"sleep","object_id":"d","event_time":"2026-11-20T07:59:00Z","user_id":5}`, OuraEvent{}, "wrong type"},
		{"not json", `event_type=create`, OuraEvent{}, "JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := ParseOura([]byte(tt.body))
			if tt.problem != "" {
				require.Error(t, err)
				assert.Equal(t, apperr.Invalid, apperr.CodeOf(err))
				assert.Equal(t, ReasonMalformedBody, apperr.ReasonOf(err))
				assert.Contains(t, err.Error(), tt.problem)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, ev)
		})
	}
}

func TestOuraDeliveryIDAndTime(t *testing.T) {
	t.Parallel()
	ev, err := ParseOura(ouraBody)
	require.NoError(t, err)
	assert.Equal(t, time.Date(2026, 11, 20, 6, 59, 0, 0, time.UTC), ev.Time())
	again, err := ParseOura(ouraBody)
	require.NoError(t, err)
	assert.Equal(t, ev.DeliveryID(), again.DeliveryID(), "a retry has the same identity")
	later := ev
	later.EventTime = "2026-11-20T08:30:00+01:00"
	assert.NotEqual(t, ev.DeliveryID(), later.DeliveryID(), "a new change of the same document is a new delivery")
	del := ev
	del.EventType = OuraDelete
	assert.NotEqual(t, ev.DeliveryID(), del.DeliveryID())
}
