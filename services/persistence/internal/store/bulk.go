package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// A large write (a HealthKit push of a thousand samples is a thousand
// records, each with a version, a reading and an outbox entry) spends its
// time in PostgreSQL decoding the unnest arrays and running one INSERT per
// table. From copyThreshold rows on, apply COPYs instead every row that
// cannot conflict with a stored one:
//
//   - readings: the replaced versions' readings are deleted first, and a
//     record's readings are unique within a transaction;
//   - events and outbox entries: always new rows (fresh event ids, an
//     identity column);
//   - records that did not exist when loadRecords read them under the
//     users' locks, which every writer of those users' records takes for
//     the whole transaction, so nobody can have inserted them since.
//
// Records that did exist still go through upsertRecordsSQL, and latest,
// user_commits and the notification through the same batch as the small
// path, in the same transaction: the rows stored are the same either way
// (TestBulkAndSmallWritesStoreTheSameRows).

var eventColumns = []string{"event_id", "received_at", "user_id", "source", "vendor_record_id", "kind", "version",
	"operation", "occurred_at", "content_hash", "reading_count"}

var recordColumns = []string{"user_id", "source", "vendor_record_id", "kind", "version", "content_hash", "event_id",
	"deleted", "metrics", "observed_min", "observed_max", "occurred_at", "deleted_at", "created_at", "updated_at"}

var outboxColumns = []string{"topic", "key", "payload_type", "payload", "traceparent", "event_count"}

// recordRows accumulates records upserts column by column.
type recordRows struct {
	users, recordIDs, kinds []string
	metrics                 [][]string
	sources                 []int16
	versions                []int64
	hashes                  [][]byte
	ids                     []pgtype.UUID
	deleted                 []bool
	lo, hi, occurred, del   []pgtype.Timestamptz
	// fresh: the record was not stored when the transaction read it.
	fresh []bool
}

// grow makes room for n more records.
func (r *recordRows) grow(n int) {
	r.users = slices.Grow(r.users, n)
	r.recordIDs = slices.Grow(r.recordIDs, n)
	r.kinds = slices.Grow(r.kinds, n)
	r.metrics = slices.Grow(r.metrics, n)
	r.sources = slices.Grow(r.sources, n)
	r.versions = slices.Grow(r.versions, n)
	r.hashes = slices.Grow(r.hashes, n)
	r.ids = slices.Grow(r.ids, n)
	r.deleted = slices.Grow(r.deleted, n)
	r.lo = slices.Grow(r.lo, n)
	r.hi = slices.Grow(r.hi, n)
	r.occurred = slices.Grow(r.occurred, n)
	r.del = slices.Grow(r.del, n)
	r.fresh = slices.Grow(r.fresh, n)
}

func (r *recordRows) add(k *recState, metrics []string, lo, hi pgtype.Timestamptz) {
	r.users = append(r.users, k.key.UserID)
	r.sources = append(r.sources, int16(k.key.Source))
	r.recordIDs = append(r.recordIDs, k.key.VendorRecordID)
	r.kinds = append(r.kinds, k.kind)
	r.versions = append(r.versions, k.version)
	r.hashes = append(r.hashes, k.hash)
	r.ids = append(r.ids, k.eventID)
	r.deleted = append(r.deleted, k.deleted)
	r.metrics = append(r.metrics, metrics)
	r.lo = append(r.lo, lo)
	r.hi = append(r.hi, hi)
	r.occurred = append(r.occurred, tsOrNull(k.occurredAt))
	r.del = append(r.del, tsOrNull(k.deletedAt))
	r.fresh = append(r.fresh, !k.inDB)
}

// upsertArgs are the upsertRecordsSQL arguments for the rows where keep
// is nil or true.
func (r *recordRows) upsertArgs(now time.Time, keep func(i int) bool) []any {
	var sub recordRows
	joined := make([]string, 0, len(r.users))
	for i := range r.users {
		if keep != nil && !keep(i) {
			continue
		}
		sub.users = append(sub.users, r.users[i])
		sub.sources = append(sub.sources, r.sources[i])
		sub.recordIDs = append(sub.recordIDs, r.recordIDs[i])
		sub.kinds = append(sub.kinds, r.kinds[i])
		sub.versions = append(sub.versions, r.versions[i])
		sub.hashes = append(sub.hashes, r.hashes[i])
		sub.ids = append(sub.ids, r.ids[i])
		sub.deleted = append(sub.deleted, r.deleted[i])
		joined = append(joined, strings.Join(r.metrics[i], ","))
		sub.lo = append(sub.lo, r.lo[i])
		sub.hi = append(sub.hi, r.hi[i])
		sub.occurred = append(sub.occurred, r.occurred[i])
		sub.del = append(sub.del, r.del[i])
	}
	if len(sub.users) == 0 {
		return nil
	}
	return []any{sub.users, sub.sources, sub.recordIDs, sub.kinds, sub.versions, sub.hashes, sub.ids, sub.deleted,
		joined, sub.lo, sub.hi, sub.occurred, sub.del, now}
}

// copyRow writes the COPY row i of recordColumns.
func (r *recordRows) copyRow(c *copyRows, i int, now time.Time) {
	c.text(r.users[i])
	c.int2(r.sources[i])
	c.text(r.recordIDs[i])
	c.text(r.kinds[i])
	c.int8(r.versions[i])
	c.bytea(r.hashes[i])
	c.uuid(r.ids[i])
	c.boolean(r.deleted[i])
	c.textArray(r.metrics[i])
	c.timestamptz(r.lo[i])
	c.timestamptz(r.hi[i])
	c.timestamptz(r.occurred[i])
	c.timestamptz(r.del[i])
	c.time(now)
	c.time(now)
}

// useBulk reports whether a write of these rows COPYs (see above).
func (s *Store) useBulk(readings, events int) bool {
	return readings >= s.copyThreshold || events >= s.copyThreshold
}

// copyBulk COPYs the rows that cannot conflict: readings, events, fresh
// records and outbox entries; it returns the upsertRecordsSQL arguments of
// the records that were stored before (nil: none). The replaced readings
// must be deleted before.
func (s *Store) copyBulk(ctx context.Context, tx pgx.Tx, readings *readingRows, ev *eventRows, recs *recordRows,
	outbox *outboxRows, now time.Time) ([]any, error) {
	c := getCopyRows()
	defer putCopyRows(c)
	n, err := c.copyInto(ctx, tx, "readings", readingColumns, len(readings.users), readings.copyRow)
	if err != nil {
		return nil, fmt.Errorf("copy readings: %w", err)
	}
	s.m.RowsWritten.WithLabelValues("readings").Add(float64(n))
	if _, err := c.copyInto(ctx, tx, "events", eventColumns, len(ev.ids), ev.copyRow); err != nil {
		return nil, fmt.Errorf("copy events: %w", err)
	}
	var fresh []int
	for i, f := range recs.fresh {
		if f {
			fresh = append(fresh, i)
		}
	}
	if _, err := c.copyInto(ctx, tx, "records", recordColumns, len(fresh), func(c *copyRows, i int) { recs.copyRow(c, fresh[i], now) }); err != nil {
		return nil, fmt.Errorf("copy records: %w", err)
	}
	if _, err := c.copyInto(ctx, tx, "outbox", outboxColumns, len(outbox.keys), outbox.copyRow); err != nil {
		return nil, fmt.Errorf("copy outbox: %w", err)
	}
	return recs.upsertArgs(now, func(i int) bool { return !recs.fresh[i] }), nil
}
