package store

// DeleteReadingsSQL is exported for plan tests.
const DeleteReadingsSQL = deleteReadingsSQL

// UserLockKey is exported for the commit-order test.
var UserLockKey = userLockKey
