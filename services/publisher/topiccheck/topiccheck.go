// Package topiccheck compares what PostgreSQL committed with what reached a
// Kafka event topic, and reports events lost, duplicated and reordered. It
// is the core of the topiccheck command (operators run it against a live
// system) and of the publisher's fault tests.
//
// Order. A key's (user's) events have one order, the order persistence
// committed them in: WriteEvents takes the user's lock, so a user's events
// are committed one transaction after another. The checker ranks each
// key's committed events by (received_at, event_id): received_at is taken
// inside the transaction and event ids are UUIDv7 (time-ordered), so the
// rank follows commit order as long as the persistence replicas' clocks
// agree to within the time between two writes of one user.
//
// Delivery is at least once, so a crash between a send and its ack
// publishes a run of a key's events again, and the topic shows the key
// going back (e3 then e2 again). That is a redelivery, harmless for a
// consumer that drops ce_ids it has seen, as long as the key catches up to
// where it was before anything newer comes. A key is reordered when it goes
// back and then either moves past its high-water mark without having caught
// up to it, or the topic ends before it caught up: a consumer applying the
// topic in order is left with an older version (e2 landing after e3 because
// a send outlived its lease and another publisher had already sent e2 and
// e3). Each such step counts once.
//
// Duplicates are counted two ways: the same ce_id more than once (expected
// under at-least-once delivery, dropped by consumers) and the same record
// version under different ce_ids (harmful: consumers cannot tell it is a
// copy; persistence's idempotency must prevent it).
package topiccheck

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Committed is one event persistence committed.
type Committed struct {
	EventID    string
	Key        string
	ReceivedAt time.Time
	Record     RecordVersion
}

// RecordVersion identifies one version of one vendor record.
type RecordVersion struct {
	UserID         string
	Source         int32
	VendorRecordID string
	Version        int64
}

// Message is one record read from the topic, in offset order within its
// partition.
type Message struct {
	Partition int32
	Offset    int64
	Key       string
	// EventID is the ce_id header.
	EventID string
	// Record is decoded from the value; zero when the value could not be
	// decoded.
	Record RecordVersion
}

// Input is what Check compares.
type Input struct {
	// Committed are the events in scope (for example, committed since a
	// time), in any order.
	Committed []Committed
	// Messages are the topic's records, each partition in offset order.
	Messages []Message
	// Pending are event ids still in the outbox: not published yet, not
	// lost.
	Pending []string
	// DeadLettered are event ids on the dead-letter topic: accounted for,
	// not lost.
	DeadLettered []string
}

// Finding locates one problem on the topic.
type Finding struct {
	Kind      string // "reordered" or "harmful_duplicate"
	Partition int32
	Offset    int64 // -1: at the end of the partition
	EventID   string
	Detail    string
}

// Report is the result of Check.
type Report struct {
	// Committed is how many events were in scope.
	Committed int
	// Messages is how many records were read from the topic.
	Messages int
	// Published is how many committed events are on the topic.
	Published int
	// Pending are committed events still in the outbox.
	Pending int
	// DeadLettered are committed events on the dead-letter topic instead.
	DeadLettered int
	// Lost are committed events neither on the topic, nor pending, nor
	// dead-lettered.
	Lost    int
	LostIDs []string
	// Duplicates counts extra copies of a ce_id (at-least-once delivery).
	Duplicates int
	// HarmfulDuplicates counts records carrying a record version already
	// seen under another ce_id.
	HarmfulDuplicates int
	// Reordered counts the steps at which a key was left behind its
	// high-water mark (see the package comment); ReorderedKeys the keys.
	Reordered     int
	ReorderedKeys int
	// Unknown are topic records whose ce_id is not in scope (written
	// before the window, or by something other than persistence).
	Unknown int
	// Undecodable are topic records without a ce_id.
	Undecodable int
	// Findings list where the reorders and harmful duplicates are (at
	// most MaxFindings).
	Findings []Finding
}

// MaxFindings caps Report.Findings and Report.LostIDs.
const MaxFindings = 50

// OK reports whether nothing was lost, reordered or harmfully duplicated.
func (r Report) OK() bool {
	return r.Lost == 0 && r.Reordered == 0 && r.HarmfulDuplicates == 0
}

// keyState follows one key through the topic.
type keyState struct {
	hw, cur   int // high-water rank and rank of the last record
	reordered bool
}

// Check compares in.Committed with in.Messages.
func Check(in Input) Report {
	rep := Report{Committed: len(in.Committed), Messages: len(in.Messages)}
	rank := ranks(in.Committed)
	committed := make(map[string]bool, len(in.Committed))
	for _, c := range in.Committed {
		committed[c.EventID] = true
	}

	copies := make(map[string]int, len(in.Committed))
	versionID := make(map[RecordVersion]string)
	keys := make(map[string]*keyState)
	partitionOf := make(map[string]int32)
	for _, m := range in.Messages {
		if m.EventID == "" {
			rep.Undecodable++
			continue
		}
		if !committed[m.EventID] {
			rep.Unknown++
			continue
		}
		copies[m.EventID]++
		if copies[m.EventID] > 1 {
			rep.Duplicates++
		}
		if m.Record != (RecordVersion{}) {
			if first, ok := versionID[m.Record]; !ok {
				versionID[m.Record] = m.EventID
			} else if first != m.EventID {
				rep.HarmfulDuplicates++
				rep.addFinding(Finding{Kind: "harmful_duplicate", Partition: m.Partition, Offset: m.Offset, EventID: m.EventID,
					Detail: fmt.Sprintf("version %d of a record already published as %s", m.Record.Version, first)})
			}
		}
		st := keys[m.Key]
		if st == nil {
			st = &keyState{}
			keys[m.Key] = st
		}
		partitionOf[m.Key] = m.Partition
		r := rank[m.EventID]
		if r > st.hw {
			if st.cur < st.hw {
				rep.Reordered++
				st.reordered = true
				rep.addFinding(Finding{Kind: "reordered", Partition: m.Partition, Offset: m.Offset, EventID: m.EventID,
					Detail: fmt.Sprintf("key moved on to rank %d while back at rank %d of %d", r, st.cur, st.hw)})
			}
			st.hw = r
		}
		st.cur = r
	}
	for key, st := range keys {
		if st.cur < st.hw {
			rep.Reordered++
			st.reordered = true
			rep.addFinding(Finding{Kind: "reordered", Partition: partitionOf[key], Offset: -1,
				Detail: fmt.Sprintf("topic ends with the key back at rank %d of %d", st.cur, st.hw)})
		}
		if st.reordered {
			rep.ReorderedKeys++
		}
	}

	pending := toSet(in.Pending)
	dead := toSet(in.DeadLettered)
	for _, c := range in.Committed {
		switch {
		case copies[c.EventID] > 0:
			rep.Published++
		case pending[c.EventID]:
			rep.Pending++
		case dead[c.EventID]:
			rep.DeadLettered++
		default:
			rep.Lost++
			if len(rep.LostIDs) < MaxFindings {
				rep.LostIDs = append(rep.LostIDs, c.EventID)
			}
		}
	}
	slices.Sort(rep.LostIDs)
	slices.SortFunc(rep.Findings, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(a.Partition, b.Partition), cmp.Compare(uint64(a.Offset), uint64(b.Offset)))
	})
	return rep
}

func (r *Report) addFinding(f Finding) {
	if len(r.Findings) < MaxFindings {
		r.Findings = append(r.Findings, f)
	}
}

// ranks numbers each key's committed events 1, 2, ... in commit order.
func ranks(committed []Committed) map[string]int {
	sorted := slices.Clone(committed)
	slices.SortFunc(sorted, func(a, b Committed) int {
		return cmp.Or(strings.Compare(a.Key, b.Key), a.ReceivedAt.Compare(b.ReceivedAt), strings.Compare(a.EventID, b.EventID))
	})
	rank := make(map[string]int, len(sorted))
	n := 0
	for i, c := range sorted {
		if i == 0 || sorted[i-1].Key != c.Key {
			n = 0
		}
		n++
		rank[c.EventID] = n
	}
	return rank
}

func toSet(ids []string) map[string]bool {
	s := make(map[string]bool, len(ids))
	for _, id := range ids {
		s[id] = true
	}
	return s
}

// Write prints the report for people (the test log, an operator's
// terminal): counts first, then where the problems are.
func (r Report) Write(w io.Writer) error {
	verdict := "OK"
	if !r.OK() {
		verdict = "FAILED"
	}
	_, err := fmt.Fprintf(w, "topiccheck %s: committed=%d messages=%d published=%d pending=%d dead_lettered=%d lost=%d "+
		"duplicates=%d harmful_duplicates=%d reordered=%d reordered_keys=%d unknown=%d undecodable=%d\n",
		verdict, r.Committed, r.Messages, r.Published, r.Pending, r.DeadLettered, r.Lost,
		r.Duplicates, r.HarmfulDuplicates, r.Reordered, r.ReorderedKeys, r.Unknown, r.Undecodable)
	if err != nil {
		return err
	}
	for _, f := range r.Findings {
		if _, err := fmt.Fprintf(w, "  %s partition=%d offset=%d event_id=%s: %s\n", f.Kind, f.Partition, f.Offset, f.EventID, f.Detail); err != nil {
			return err
		}
	}
	for _, id := range r.LostIDs {
		if _, err := fmt.Fprintf(w, "  lost event_id=%s\n", id); err != nil {
			return err
		}
	}
	return nil
}
