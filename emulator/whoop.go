package emulator

import "github.com/biobridge/bridge/emulator/internal/store"

// WHOOP score states.
const (
	ScoreStateScored     = store.ScoreStateScored
	ScoreStatePending    = store.ScoreStatePending
	ScoreStateUnscorable = store.ScoreStateUnscorable
)

// whoopSleepBundleFields are the keys a WHOOP "sleep" RecordSpec accepts:
// the sleep's, its recovery's and its cycle's.
func whoopSleepBundleFields(c *store.WhoopCycle, s *store.WhoopSleep, r *store.WhoopRecovery) store.FieldSet {
	fs := store.FieldSet{}
	fs.Merge(c.Fields())
	fs.Merge(s.Fields())
	if r != nil {
		fs.Merge(r.Fields())
	}
	return fs
}
