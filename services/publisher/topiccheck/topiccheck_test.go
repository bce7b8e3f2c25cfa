package topiccheck_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/services/publisher/topiccheck"
)

// history commits n events for each key, one record version each, a
// millisecond apart.
func history(keys []string, n int) []topiccheck.Committed {
	t0 := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	var out []topiccheck.Committed
	for _, k := range keys {
		for i := 1; i <= n; i++ {
			out = append(out, topiccheck.Committed{
				EventID: fmt.Sprintf("%s-e%d", k, i), Key: k, ReceivedAt: t0.Add(time.Duration(i) * time.Millisecond),
				Record: topiccheck.RecordVersion{UserID: k, Source: 1, VendorRecordID: "r", Version: int64(i)},
			})
		}
	}
	return out
}

// topic lays out the events of key a in the order given by their numbers.
func topic(order ...int) []topiccheck.Message {
	out := make([]topiccheck.Message, len(order))
	for i, n := range order {
		out[i] = topiccheck.Message{Partition: 0, Offset: int64(i), Key: "a", EventID: fmt.Sprintf("a-e%d", n),
			Record: topiccheck.RecordVersion{UserID: "a", Source: 1, VendorRecordID: "r", Version: int64(n)}}
	}
	return out
}

func TestCheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name            string
		order           []int
		pending, dead   []string
		lost, dup       int
		reordered, keys int
	}{
		{name: "in order", order: []int{1, 2, 3}},
		{name: "redelivered after a crash", order: []int{1, 2, 3, 2, 3}, dup: 2},
		{name: "redelivered twice, cut short once", order: []int{1, 2, 3, 2, 2, 3}, dup: 3},
		{name: "redelivered from the start, then newer", order: []int{1, 2, 1, 2, 3}, dup: 2},
		{name: "late send after another holder published", order: []int{1, 2, 3, 2}, dup: 1, reordered: 1, keys: 1},
		{name: "late send, then newer events", order: []int{1, 2, 3, 2, 4}, dup: 1, reordered: 1, keys: 1, lost: 1},
		{name: "overtaken: first copy out of order", order: []int{1, 3, 2}, reordered: 1, keys: 1},
		{name: "lost", order: []int{1, 3}, lost: 1},
		{name: "pending is not lost", order: []int{1, 2}, pending: []string{"a-e3"}},
		{name: "dead-lettered is not lost", order: []int{1, 3}, dead: []string{"a-e2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := 3
			if tc.name == "late send, then newer events" {
				n = 5
			}
			rep := topiccheck.Check(topiccheck.Input{Committed: history([]string{"a"}, n), Messages: topic(tc.order...),
				Pending: tc.pending, DeadLettered: tc.dead})
			var buf bytes.Buffer
			require.NoError(t, rep.Write(&buf))
			t.Log(buf.String())
			require.Equal(t, tc.lost, rep.Lost, "lost")
			require.Equal(t, tc.dup, rep.Duplicates, "duplicates")
			require.Equal(t, tc.reordered, rep.Reordered, "reordered")
			require.Equal(t, tc.keys, rep.ReorderedKeys, "reordered keys")
			require.Zero(t, rep.HarmfulDuplicates)
			require.Equal(t, tc.lost == 0 && tc.reordered == 0, rep.OK())
		})
	}
}

func TestCheckHarmfulDuplicateAndUnknown(t *testing.T) {
	t.Parallel()
	committed := history([]string{"a", "b"}, 2)
	// The same version of a's record under a second event id: persistence
	// wrote it twice.
	committed = append(committed, topiccheck.Committed{EventID: "a-copy", Key: "a", ReceivedAt: committed[1].ReceivedAt.Add(time.Millisecond),
		Record: committed[1].Record})
	msgs := append(topic(1, 2), topiccheck.Message{Partition: 0, Offset: 2, Key: "a", EventID: "a-copy", Record: committed[1].Record},
		topiccheck.Message{Partition: 1, Offset: 0, Key: "b", EventID: "b-e1"},
		topiccheck.Message{Partition: 1, Offset: 1, Key: "b", EventID: "b-e2"},
		topiccheck.Message{Partition: 1, Offset: 2, Key: "b", EventID: "from-elsewhere"},
		topiccheck.Message{Partition: 1, Offset: 3, Key: "b"})
	rep := topiccheck.Check(topiccheck.Input{Committed: committed, Messages: msgs})
	require.Equal(t, 1, rep.HarmfulDuplicates)
	require.Zero(t, rep.Duplicates)
	require.Equal(t, 1, rep.Unknown)
	require.Equal(t, 1, rep.Undecodable)
	require.Equal(t, 5, rep.Published)
	require.False(t, rep.OK())
	require.Equal(t, "harmful_duplicate", rep.Findings[0].Kind)
}

func TestDecode(t *testing.T) {
	t.Parallel()
	ev := &biometricsv1.BiometricEvent{EventId: "e1", UserId: "u", Source: biometricsv1.Source_SOURCE_OURA, VendorRecordId: "r", Version: 3}
	value, err := proto.Marshal(ev)
	require.NoError(t, err)
	m := topiccheck.Decode(2, 7, []byte("u"), value, []*sarama.RecordHeader{{Key: []byte("ce_id"), Value: []byte("e1")}})
	require.Equal(t, topiccheck.Message{Partition: 2, Offset: 7, Key: "u", EventID: "e1",
		Record: topiccheck.RecordVersion{UserID: "u", Source: int32(biometricsv1.Source_SOURCE_OURA), VendorRecordID: "r", Version: 3}}, m)
	m = topiccheck.Decode(0, 0, nil, []byte{0xff, 0xff}, nil)
	require.Empty(t, m.EventID)
	require.Zero(t, m.Record)
}

// FuzzDecode: whatever is on the topic, decoding never panics and a value
// that decodes keeps its identity.
func FuzzDecode(f *testing.F) {
	ev, _ := proto.Marshal(&biometricsv1.BiometricEvent{EventId: "e1", UserId: "u", VendorRecordId: "r", Version: 1})
	f.Add([]byte("u"), ev, "e1")
	f.Add([]byte{}, []byte{0x0a}, "")
	f.Fuzz(func(t *testing.T, key, value []byte, id string) {
		m := topiccheck.Decode(0, 1, key, value, []*sarama.RecordHeader{{Key: []byte("ce_id"), Value: []byte(id)}, nil})
		if m.EventID != id || m.Key != string(key) {
			t.Fatalf("decode lost the key or ce_id: %+v", m)
		}
		rep := topiccheck.Check(topiccheck.Input{Messages: []topiccheck.Message{m, m}})
		if rep.Messages != 2 {
			t.Fatalf("check dropped messages: %+v", rep)
		}
	})
}
