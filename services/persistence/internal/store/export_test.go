package store

// DeleteReadingsSQL is exported for plan tests.
const DeleteReadingsSQL = deleteReadingsSQL
