// Package outboxrun is the stored form of an event run: the outbox row in
// which persistence keeps a run of one key's events written by one
// transaction (payload_type 3 in biometrics.outbox). The payload is each
// event's encoding, each preceded by its length as a protobuf varint (the
// wire form of a repeated bytes field without its tags). Persistence
// writes and leases runs; tools that read the outbox directly, such as
// topiccheck, split them with Split.
package outboxrun

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// PayloadType is the outbox payload_type of a run.
const PayloadType = 3

// Size is what an event of n bytes adds to a run.
func Size(n int) int { return protowire.SizeVarint(uint64(n)) + n }

// Append appends event to the run b.
func Append(b, event []byte) []byte { return protowire.AppendBytes(b, event) }

// Split returns the events of the run b, in order. The events alias b.
func Split(b []byte) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, fmt.Errorf("event run: event %d: %w", len(out), protowire.ParseError(n))
		}
		out = append(out, v)
		b = b[n:]
	}
	return out, nil
}
