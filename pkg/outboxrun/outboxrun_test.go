package outboxrun

import (
	"bytes"
	"testing"
)

func TestAppendSplit(t *testing.T) {
	events := [][]byte{[]byte("a"), {}, bytes.Repeat([]byte{0xff}, 300), []byte("last")}
	var run []byte
	size := 0
	for _, e := range events {
		run = Append(run, e)
		size += Size(len(e))
	}
	if len(run) != size {
		t.Fatalf("run is %d bytes, Size says %d", len(run), size)
	}
	got, err := Split(run)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(events) {
		t.Fatalf("split %d events, want %d", len(got), len(events))
	}
	for i := range events {
		if !bytes.Equal(got[i], events[i]) {
			t.Fatalf("event %d: %x, want %x", i, got[i], events[i])
		}
	}
	if _, err := Split(run[:len(run)-1]); err == nil {
		t.Fatal("a truncated run split without an error")
	}
}

// FuzzSplit: Split never panics, and what it splits appends back to the
// same bytes.
func FuzzSplit(f *testing.F) {
	f.Add([]byte{})
	f.Add(Append(Append(nil, []byte("one")), []byte("two")))
	f.Add([]byte{0x80})
	f.Add([]byte{0x05, 'a'})
	f.Fuzz(func(t *testing.T, b []byte) {
		events, err := Split(b)
		if err != nil {
			return
		}
		var again []byte
		for _, e := range events {
			again = Append(again, e)
		}
		// A varint may be encoded with redundant bytes; the re-encoding is
		// minimal, so compare what it decodes to.
		back, err := Split(again)
		if err != nil || len(back) != len(events) {
			t.Fatalf("re-encoded run does not split back: %v", err)
		}
		for i := range events {
			if !bytes.Equal(back[i], events[i]) {
				t.Fatalf("event %d changed", i)
			}
		}
	})
}
