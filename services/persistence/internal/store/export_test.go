package store

// DeleteReadingsSQL is exported for plan tests.
const DeleteReadingsSQL = deleteReadingsSQL

// SelectRecordsSQL is exported for plan tests.
const SelectRecordsSQL = selectRecordsSQL

// UserLockKey is exported for the commit-order test.
var UserLockKey = userLockKey

// LeaseHeadsSQL is exported for the plan test.
const LeaseHeadsSQL = leaseHeadsSQL

// SetCopyThreshold sets the number of rows from which a write COPYs.
func SetCopyThreshold(s *Store, n int) { s.copyThreshold = n }

// RunIDStride is exported for the run tests.
const RunIDStride = runIDStride
