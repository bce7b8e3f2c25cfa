package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/outboxrun"
	"github.com/biobridge/bridge/pkg/topics"
	"github.com/biobridge/bridge/services/persistence/internal/record"
)

// Outbox payload types.
const (
	payloadEvent      = 1
	payloadConnection = 2
	// payloadEventRun is a run of one key's events written by one
	// transaction, in commit order, each as a payloadEvent row stores it
	// (package outboxrun). Leases hand it out as one entry per event (see
	// migration 0006).
	payloadEventRun = outboxrun.PayloadType
)

// Runs: row ids are drawn runIDStride apart (migration 0006), event i of
// the run in row r is entry r + 1 + i, so a run holds at most
// runIDStride - 1 events. maxRunBytes bounds a run's payload.
const (
	runIDStride  = 1024
	maxRunEvents = runIDStride - 1
	maxRunBytes  = 1 << 20
)

// Event operations as stored in events.operation.
const (
	opUpsert = 1
	opDelete = 2
)

// Op is one change of a write transaction: a record version or a deletion.
type Op struct {
	Upsert *record.Event
	Delete *Delete
	// TraceParent is the W3C traceparent of the request that asked for the
	// change; it travels with the outbox entry to Kafka.
	TraceParent string
}

// Delete asks to tombstone one record.
type Delete struct {
	Key record.Key
	// DeletedAt is when the source deleted the record (zero: now).
	DeletedAt time.Time
}

// Reasons an upsert is rejected by the store (WriteResult.reason with
// WRITE_STATUS_REJECTED). Nothing is written for a rejected upsert: no
// event, no readings, no outbox entry.
const (
	// ReasonStaleVersion: the upsert's occurred_at is older than the
	// newest occurred_at the record has seen, so it is an old fetch (a
	// reconcile or backfill page, a retried request) arriving after a newer
	// version; storing it would roll the record back.
	ReasonStaleVersion = "stale_version"
	// ReasonRecordDeleted: the record is deleted and the upsert does not
	// prove a re-creation. HealthKit sample UUIDs never come back once
	// deleted (a retried push after a delete must not resurrect the
	// sample); other sources re-create a record only with an occurred_at
	// strictly after the deletion.
	ReasonRecordDeleted = "record_deleted"
)

// OpResult is the outcome of one Op.
type OpResult struct {
	// Status is set for upserts, DeleteStatus for deletions.
	Status       persistencev1.WriteStatus
	DeleteStatus persistencev1.DeleteStatus
	EventID      string
	Version      int64
	// Reason is set when Status is WRITE_STATUS_REJECTED.
	Reason string
}

// recState tracks one record through a transaction.
type recState struct {
	key     record.Key
	exists  bool
	version int64
	hash    []byte
	eventID pgtype.UUID
	deleted bool
	kind    string
	// occurredAt is the newest source time of the record's accepted
	// versions (zero: never known); deletedAt is when the source deleted
	// it (zero while live).
	occurredAt time.Time
	deletedAt  time.Time
	// occBumped: a duplicate carried a newer occurredAt, which must be
	// stored even though no version is written.
	occBumped bool

	// What the database holds before the transaction.
	inDB          bool
	storedLive    bool
	storedMetrics []string
	storedMin     time.Time
	storedMax     time.Time

	touched       bool
	replaceStored bool
	// final is the version whose readings end up stored (nil: none).
	final *record.Event
}

// Apply stores ops in one transaction and returns a result per op and the
// latest-value changes per user, for the cache. Ops are applied in order,
// so a batch may hold several versions of one record. Transactions that
// hit a deadlock, serialization failure or lock timeout are retried.
func (s *Store) Apply(ctx context.Context, ops []Op) ([]OpResult, []record.UserChange, error) {
	for attempt := 0; ; attempt++ {
		start := time.Now()
		res, changes, err := s.apply(ctx, ops)
		if err != nil {
			s.m.TxSeconds.WithLabelValues("error").Observe(time.Since(start).Seconds())
			if retryable(err) && attempt < 3 {
				s.m.TxRetries.Inc()
				continue
			}
			return nil, nil, err
		}
		s.m.TxSeconds.WithLabelValues("ok").Observe(time.Since(start).Seconds())
		s.m.TxEvents.Observe(float64(len(ops)))
		return res, changes, nil
	}
}

// selectRecordsSQL reads the stored state of the written records: one
// primary-key probe per key, whatever the table's size or statistics. (As
// a plain join, a table of up to about 150,000 rows, or one not yet
// analyzed, was hashed whole for every write: a push of 1000 samples read
// every user's records. The LIMIT keeps the planner from flattening the
// subquery back into that join; the key is the primary key, so it drops
// nothing.)
const selectRecordsSQL = `
SELECT r.user_id, r.source, r.vendor_record_id, r.version, r.content_hash, r.event_id, r.deleted, r.kind,
       r.metrics, r.observed_min, r.observed_max, r.occurred_at, r.deleted_at
FROM unnest($1::text[], $2::int2[], $3::text[]) AS k(u, s, v)
CROSS JOIN LATERAL (
  SELECT * FROM records r
  WHERE r.user_id = k.u AND r.source = k.s AND r.vendor_record_id = k.v
  LIMIT 1
) r`

// deleteReadingsSQL removes the stored readings of replaced or deleted
// records through the primary key: the record's metrics and observation
// range pin the index ranges and prune partitions.
const deleteReadingsSQL = `
DELETE FROM readings r
USING (
  SELECT x.u, x.s, x.v, unnest(string_to_array(x.m, ',')) AS metric, x.lo, x.hi
  FROM unnest($1::text[], $2::int2[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[]) AS x(u, s, v, m, lo, hi)
) d
WHERE r.user_id = d.u AND r.metric = d.metric AND r.observed_at BETWEEN d.lo AND d.hi
  AND r.source = d.s AND r.vendor_record_id = d.v`

const insertReadingsSQL = `
INSERT INTO readings (user_id, metric, observed_at, source, vendor_record_id, seq, value, start_time,
                      device_name, device_model, device_bundle_id, event_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int2[], $5::text[], $6::int4[],
                     $7::float8[], $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::uuid[])
ON CONFLICT DO NOTHING`

var readingColumns = []string{"user_id", "metric", "observed_at", "source", "vendor_record_id", "seq", "value",
	"start_time", "device_name", "device_model", "device_bundle_id", "event_id"}

const insertEventsSQL = `
INSERT INTO events (event_id, received_at, user_id, source, vendor_record_id, kind, version, operation,
                    occurred_at, content_hash, reading_count)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::int2[], $5::text[], $6::text[],
                     $7::int8[], $8::int2[], $9::timestamptz[], $10::bytea[], $11::int4[])`

const upsertRecordsSQL = `
INSERT INTO records AS r (user_id, source, vendor_record_id, kind, version, content_hash, event_id, deleted,
                          metrics, observed_min, observed_max, occurred_at, deleted_at, created_at, updated_at)
SELECT x.u, x.s, x.v, x.k, x.ver, x.h, x.e, x.d, string_to_array(x.m, ','), x.lo, x.hi, x.o, x.da, $14, $14
FROM unnest($1::text[], $2::int2[], $3::text[], $4::text[], $5::int8[], $6::bytea[], $7::uuid[], $8::bool[],
            $9::text[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[], $13::timestamptz[])
     AS x(u, s, v, k, ver, h, e, d, m, lo, hi, o, da)
ON CONFLICT (user_id, source, vendor_record_id) DO UPDATE SET
  kind = excluded.kind, version = excluded.version, content_hash = excluded.content_hash,
  event_id = excluded.event_id, deleted = excluded.deleted, metrics = excluded.metrics,
  observed_min = excluded.observed_min, observed_max = excluded.observed_max,
  occurred_at = excluded.occurred_at, deleted_at = excluded.deleted_at, updated_at = excluded.updated_at`

// bumpOccurredSQL stores a newer occurred_at that arrived with a duplicate
// (the source touched the record without changing it), so an older fetch
// that arrives later is still recognized as stale.
const bumpOccurredSQL = `
UPDATE records r SET occurred_at = x.o
FROM unnest($1::text[], $2::int2[], $3::text[], $4::timestamptz[]) AS x(u, s, v, o)
WHERE r.user_id = x.u AND r.source = x.s AND r.vendor_record_id = x.v
  AND (r.occurred_at IS NULL OR r.occurred_at < x.o)`

const latestColumns = `user_id, metric, observed_at, source, vendor_record_id, seq, value, start_time,
  device_name, device_model, device_bundle_id`

// recomputeLatestSQL repairs latest rows that point at a replaced or
// deleted record: the newest remaining reading (which may be the record's
// new version) takes its place, or the row goes when nothing is left.
const recomputeLatestSQL = `
WITH stale AS (
  SELECT l.user_id, l.metric
  FROM latest l
  JOIN unnest($1::text[], $2::int2[], $3::text[]) AS x(u, s, v)
    ON l.user_id = x.u AND l.source = x.s AND l.vendor_record_id = x.v
), fresh AS (
  SELECT st.user_id, st.metric, n.observed_at, n.source, n.vendor_record_id, n.seq, n.value, n.start_time,
         n.device_name, n.device_model, n.device_bundle_id
  FROM stale st
  LEFT JOIN LATERAL (
    SELECT * FROM readings r
    WHERE r.user_id = st.user_id AND r.metric = st.metric
    ORDER BY r.observed_at DESC, r.source DESC, r.vendor_record_id DESC, r.seq DESC
    LIMIT 1
  ) n ON true
), removed AS (
  DELETE FROM latest l USING fresh f
  WHERE f.observed_at IS NULL AND l.user_id = f.user_id AND l.metric = f.metric
  RETURNING l.user_id, l.metric
), updated AS (
  UPDATE latest l SET observed_at = f.observed_at, source = f.source, vendor_record_id = f.vendor_record_id,
    seq = f.seq, value = f.value, start_time = f.start_time, device_name = f.device_name,
    device_model = f.device_model, device_bundle_id = f.device_bundle_id, updated_at = now()
  FROM fresh f
  WHERE f.observed_at IS NOT NULL AND l.user_id = f.user_id AND l.metric = f.metric
  RETURNING l.user_id, l.metric, l.observed_at, l.source, l.vendor_record_id, l.seq, l.value, l.start_time,
    l.device_name, l.device_model, l.device_bundle_id
)
SELECT false, ` + latestColumns + ` FROM updated
UNION ALL
SELECT true, user_id, metric, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM removed`

// upsertLatestSQL raises latest values; the WHERE makes it a
// compare-and-set in the same total order CompareLatest uses, so an older
// reading never replaces a newer one.
const upsertLatestSQL = `
INSERT INTO latest AS l (` + latestColumns + `)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int2[], $5::text[], $6::int4[],
                     $7::float8[], $8::timestamptz[], $9::text[], $10::text[], $11::text[])
ON CONFLICT (user_id, metric) DO UPDATE SET
  observed_at = excluded.observed_at, source = excluded.source, vendor_record_id = excluded.vendor_record_id,
  seq = excluded.seq, value = excluded.value, start_time = excluded.start_time,
  device_name = excluded.device_name, device_model = excluded.device_model,
  device_bundle_id = excluded.device_bundle_id, updated_at = now()
WHERE (excluded.observed_at, excluded.source, excluded.vendor_record_id, excluded.seq)
    > (l.observed_at, l.source, l.vendor_record_id, l.seq)
RETURNING false, l.user_id, l.metric, l.observed_at, l.source, l.vendor_record_id, l.seq, l.value, l.start_time,
  l.device_name, l.device_model, l.device_bundle_id`

const bumpCommitsSQL = `
INSERT INTO user_commits AS c (user_id, seq)
SELECT u, 1 FROM unnest($1::text[]) AS u
ON CONFLICT (user_id) DO UPDATE SET seq = c.seq + 1
RETURNING user_id, seq`

const insertOutboxSQL = `
INSERT INTO outbox (topic, key, payload_type, payload, traceparent, event_count)
SELECT * FROM unnest($1::text[], $2::text[], $3::int2[], $4::bytea[], $5::text[], $6::int4[])`

const notifySQL = `SELECT pg_notify('` + NotifyChannel + `', '')`

// outboxRows accumulates outbox inserts.
type outboxRows struct {
	topics, keys, traceparents []string
	types                      []int16
	payloads                   [][]byte
	// counts are the rows' event counts (1, or a run's length).
	counts []int32
}

func (o *outboxRows) add(topic, key string, typ int16, payload []byte, traceparent string) {
	o.topics = append(o.topics, topic)
	o.keys = append(o.keys, key)
	o.types = append(o.types, typ)
	o.payloads = append(o.payloads, payload)
	o.traceparents = append(o.traceparents, traceparent)
	o.counts = append(o.counts, 1)
}

// args are the insertOutboxSQL arguments.
func (o *outboxRows) args() []any {
	return []any{o.topics, o.keys, o.types, o.payloads, o.traceparents, o.counts}
}

// runs folds each key's consecutive events of the same topic and
// traceparent into runs (payloadEventRun rows), at most maxRunEvents
// events and maxRunBytes of payload each; a run of one event stays a
// payloadEvent row. A key's rows keep their order (a run is the key's last
// row when it grows), which is all the outbox promises: order per key.
func (o *outboxRows) runs() *outboxRows {
	type run struct {
		row      int // index in out
		payloads [][]byte
		size     int
	}
	out := &outboxRows{}
	out.grow(len(o.keys))
	open := map[string]*run{}
	var all []*run
	for i, key := range o.keys {
		payload := o.payloads[i]
		if o.types[i] != payloadEvent {
			delete(open, key)
			out.add(o.topics[i], key, o.types[i], payload, o.traceparents[i])
			continue
		}
		r := open[key]
		if r != nil && out.topics[r.row] == o.topics[i] && out.traceparents[r.row] == o.traceparents[i] &&
			len(r.payloads) < maxRunEvents && r.size+outboxrun.Size(len(payload)) <= maxRunBytes {
			r.payloads = append(r.payloads, payload)
			r.size += outboxrun.Size(len(payload))
			continue
		}
		r = &run{row: len(out.keys), payloads: [][]byte{payload}, size: outboxrun.Size(len(payload))}
		open[key] = r
		all = append(all, r)
		out.add(o.topics[i], key, payloadEvent, payload, o.traceparents[i])
	}
	for _, r := range all {
		if len(r.payloads) == 1 {
			continue
		}
		b := make([]byte, 0, r.size)
		for _, p := range r.payloads {
			b = outboxrun.Append(b, p)
		}
		out.types[r.row], out.payloads[r.row], out.counts[r.row] = payloadEventRun, b, int32(len(r.payloads))
	}
	return out
}

// grow makes room for n more entries.
func (o *outboxRows) grow(n int) {
	o.topics = slices.Grow(o.topics, n)
	o.keys = slices.Grow(o.keys, n)
	o.traceparents = slices.Grow(o.traceparents, n)
	o.types = slices.Grow(o.types, n)
	o.payloads = slices.Grow(o.payloads, n)
	o.counts = slices.Grow(o.counts, n)
}

// copyRow writes the COPY row i of outboxColumns.
func (o *outboxRows) copyRow(c *copyRows, i int) {
	c.text(o.topics[i])
	c.text(o.keys[i])
	c.int2(o.types[i])
	c.bytea(o.payloads[i])
	c.text(o.traceparents[i])
	c.int4(o.counts[i])
}

// eventRows accumulates events inserts.
type eventRows struct {
	ids         []pgtype.UUID
	received    []time.Time
	users       []string
	sources     []int16
	recordIDs   []string
	kinds       []string
	versions    []int64
	operations  []int16
	occurred    []pgtype.Timestamptz
	hashes      [][]byte
	readingsCnt []int32
}

// grow makes room for n more events.
func (e *eventRows) grow(n int) {
	e.ids = slices.Grow(e.ids, n)
	e.received = slices.Grow(e.received, n)
	e.users = slices.Grow(e.users, n)
	e.sources = slices.Grow(e.sources, n)
	e.recordIDs = slices.Grow(e.recordIDs, n)
	e.kinds = slices.Grow(e.kinds, n)
	e.versions = slices.Grow(e.versions, n)
	e.operations = slices.Grow(e.operations, n)
	e.occurred = slices.Grow(e.occurred, n)
	e.hashes = slices.Grow(e.hashes, n)
	e.readingsCnt = slices.Grow(e.readingsCnt, n)
}

// copyRow writes the COPY row i of eventColumns.
func (e *eventRows) copyRow(c *copyRows, i int) {
	c.uuid(e.ids[i])
	c.time(e.received[i])
	c.text(e.users[i])
	c.int2(e.sources[i])
	c.text(e.recordIDs[i])
	c.text(e.kinds[i])
	c.int8(e.versions[i])
	c.int2(e.operations[i])
	c.timestamptz(e.occurred[i])
	c.bytea(e.hashes[i])
	c.int4(e.readingsCnt[i])
}

// readingRows accumulates readings (and latest) rows column by column.
type readingRows struct {
	users, metrics, recordIDs, devNames, devModels, devBundles []string
	observed                                                   []time.Time
	starts                                                     []pgtype.Timestamptz
	sources                                                    []int16
	seqs                                                       []int32
	values                                                     []float64
	// events is only filled for readings rows (latest has no event).
	events []pgtype.UUID
}

func newReadingRows(n int) *readingRows {
	return &readingRows{
		users: make([]string, 0, n), metrics: make([]string, 0, n), recordIDs: make([]string, 0, n),
		devNames: make([]string, 0, n), devModels: make([]string, 0, n), devBundles: make([]string, 0, n),
		observed: make([]time.Time, 0, n), starts: make([]pgtype.Timestamptz, 0, n),
		sources: make([]int16, 0, n), seqs: make([]int32, 0, n), values: make([]float64, 0, n),
		events: make([]pgtype.UUID, 0, n),
	}
}

func (r *readingRows) add(user string, l record.Latest) {
	r.users = append(r.users, user)
	r.metrics = append(r.metrics, l.Metric)
	r.observed = append(r.observed, l.ObservedAt)
	r.sources = append(r.sources, int16(l.Source))
	r.recordIDs = append(r.recordIDs, l.VendorRecordID)
	r.seqs = append(r.seqs, l.Seq)
	r.values = append(r.values, l.Value)
	r.starts = append(r.starts, tsOrNull(l.StartTime))
	r.devNames = append(r.devNames, l.Device.Name)
	r.devModels = append(r.devModels, l.Device.Model)
	r.devBundles = append(r.devBundles, l.Device.BundleID)
}

func (r *readingRows) args() []any {
	return []any{r.users, r.metrics, r.observed, r.sources, r.recordIDs, r.seqs, r.values, r.starts,
		r.devNames, r.devModels, r.devBundles}
}

// readingArgs are the insertReadingsSQL arguments.
func (r *readingRows) readingArgs() []any {
	return append(r.args(), r.events)
}

// copyRow writes the COPY row i of readingColumns.
func (r *readingRows) copyRow(c *copyRows, i int) {
	c.text(r.users[i])
	c.text(r.metrics[i])
	c.time(r.observed[i])
	c.int2(r.sources[i])
	c.text(r.recordIDs[i])
	c.int4(r.seqs[i])
	c.float8(r.values[i])
	c.timestamptz(r.starts[i])
	c.text(r.devNames[i])
	c.text(r.devModels[i])
	c.text(r.devBundles[i])
	c.uuid(r.events[i])
}

func tsOrNull(t time.Time) pgtype.Timestamptz {
	if t.IsZero() {
		return pgtype.Timestamptz{}
	}
	return pgtype.Timestamptz{Time: t, Valid: true}
}

func newEventID() (pgtype.UUID, string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return pgtype.UUID{}, "", fmt.Errorf("generate event id: %w", err)
	}
	return pgtype.UUID{Bytes: id, Valid: true}, id.String(), nil
}

func uuidString(u pgtype.UUID) string {
	if !u.Valid {
		return ""
	}
	return uuid.UUID(u.Bytes).String()
}

// rejectUpsert returns why an upsert of changed content (or onto a
// tombstone) must not become a new version, or "" to accept it. An unknown
// occurred_at (zero) never proves anything: it cannot be stale, and it
// cannot re-create a deleted record. Equal times with different content are
// a new version, since vendors do not always bump their timestamps.
func (st *recState) rejectUpsert(ev *record.Event) string {
	if !st.exists {
		return ""
	}
	if st.deleted {
		if ev.Source == biometricsv1.Source_SOURCE_HEALTHKIT || ev.OccurredAt.IsZero() || st.deletedAt.IsZero() ||
			!ev.OccurredAt.After(st.deletedAt) {
			return ReasonRecordDeleted
		}
	}
	if !ev.OccurredAt.IsZero() && ev.OccurredAt.Before(st.occurredAt) {
		return ReasonStaleVersion
	}
	return ""
}

// apply is one attempt of Apply: it reads the records the ops touch under
// their users' locks (round trip 1), decides every op in memory, and
// writes the outcome in one batch (round trip 2) before committing.
func (s *Store) apply(ctx context.Context, ops []Op) (_ []OpResult, _ []record.UserChange, err error) {
	states, keys, users, err := opKeys(ops)
	if err != nil {
		return nil, nil, err
	}

	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("begin write transaction: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()

	// Round trip 1: the users' locks, then their records' current state
	// and which of them were erased.
	erased, err := s.loadRecords(ctx, tx, users, keys, states)
	if err != nil {
		return nil, nil, err
	}
	// Stamped under the users' locks: of two writes of one user, the one
	// that commits later is received later (per-user order by received_at
	// is commit order).
	now := record.Micros(time.Now())

	// Decide every op in order, in memory.
	d, err := s.decide(ops, states, erased, now)
	if err != nil {
		return nil, nil, err
	}

	// Newer times that came with duplicates of records this transaction
	// does not otherwise write.
	bump := occurredBumps(keys, states)

	if len(d.changedUserList) == 0 {
		// Only duplicates, rejections and no-op deletions: no version,
		// no outbox entry; at most newer times to keep.
		if len(bump.users) > 0 {
			if _, err := tx.Exec(ctx, bumpOccurredSQL, bump.users, bump.sources, bump.recordIDs, bump.occurred); err != nil {
				return nil, nil, fmt.Errorf("store occurred_at: %w", err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return nil, nil, fmt.Errorf("commit: %w", err)
		}
		return d.results, nil, nil
	}

	// Collect the row sets.
	rows := collectRows(keys, states)

	// Round trip 2: every write of the transaction in one batch.
	latest, seqs, err := s.writeRows(ctx, tx, d, rows, bump, now)
	if err != nil {
		return nil, nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, nil, fmt.Errorf("commit: %w", err)
	}
	s.observeWrite(keys, states, d)
	return d.results, userChanges(d.changedUserList, seqs, latest), nil
}

// opKeys indexes ops by record, in first-seen order, and lists their users
// in first-seen order.
func opKeys(ops []Op) (map[record.Key]*recState, []record.Key, []string, error) {
	states := make(map[record.Key]*recState, len(ops))
	keys := make([]record.Key, 0, len(ops))
	var users []string
	seenUser := map[string]bool{}
	for _, op := range ops {
		var k record.Key
		switch {
		case op.Upsert != nil:
			k = op.Upsert.Key()
		case op.Delete != nil:
			k = op.Delete.Key
		default:
			return nil, nil, nil, errors.New("apply: empty op")
		}
		if _, ok := states[k]; !ok {
			states[k] = &recState{key: k}
			keys = append(keys, k)
		}
		if !seenUser[k.UserID] {
			seenUser[k.UserID] = true
			users = append(users, k.UserID)
		}
	}
	return states, keys, users, nil
}

// decisions is the in-memory outcome of a transaction's ops: a result per
// op, the events and outbox rows to insert, and the users whose data
// changed.
type decisions struct {
	results []OpResult
	evRows  eventRows
	outbox  outboxRows
	// outboxRows is how many outbox rows the events took (runs).
	outboxRows      int
	changedUsers    map[string]bool
	changedUserList []string
	events          eventEncoder
}

func (d *decisions) markChanged(u string) {
	if !d.changedUsers[u] {
		d.changedUsers[u] = true
		d.changedUserList = append(d.changedUserList, u)
	}
}

// decide decides every op in order against the records' states, updating
// the states as it goes.
func (s *Store) decide(ops []Op, states map[record.Key]*recState, erased map[string]bool, now time.Time) (*decisions, error) {
	d := &decisions{results: make([]OpResult, len(ops)), changedUsers: map[string]bool{}}
	// Most ops of a write make an event and an outbox entry each: sized
	// once instead of grown a dozen slices at a time.
	d.evRows.grow(len(ops))
	d.outbox.grow(len(ops))
	for i, op := range ops {
		switch {
		case op.Upsert != nil && erased[op.Upsert.UserID]:
			// The user's data was erased: nothing of theirs is stored again.
			d.results[i] = OpResult{Status: persistencev1.WriteStatus_WRITE_STATUS_REJECTED, Reason: ReasonUserErased}
			s.m.WritesRefused.Inc()
			continue
		case op.Delete != nil && erased[op.Delete.Key.UserID]:
			d.results[i] = OpResult{DeleteStatus: persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND}
			s.m.WritesRefused.Inc()
			continue
		case op.Upsert != nil:
			if err := d.upsert(i, op, states[op.Upsert.Key()], now); err != nil {
				return nil, err
			}
		case op.Delete != nil:
			if err := d.delete(i, op, states[op.Delete.Key], now); err != nil {
				return nil, err
			}
		}
	}
	return d, nil
}

// upsert decides ops[i], an upsert of the record whose state is st.
func (d *decisions) upsert(i int, op Op, st *recState, now time.Time) error {
	ev := op.Upsert
	if st.exists && !st.deleted && bytes.Equal(st.hash, ev.Hash[:]) {
		// The content is already stored, whatever its time: a
		// duplicate, never a rejection. A newer time is kept.
		if ev.OccurredAt.After(st.occurredAt) {
			st.occurredAt, st.occBumped = ev.OccurredAt, true
		}
		d.results[i] = OpResult{Status: persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE, EventID: uuidString(st.eventID), Version: st.version}
		return nil
	}
	if reason := st.rejectUpsert(ev); reason != "" {
		d.results[i] = OpResult{Status: persistencev1.WriteStatus_WRITE_STATUS_REJECTED, Reason: reason, Version: st.version}
		return nil
	}
	status := persistencev1.WriteStatus_WRITE_STATUS_INSERTED
	if st.exists {
		status = persistencev1.WriteStatus_WRITE_STATUS_UPDATED
	}
	id, idStr, err := newEventID()
	if err != nil {
		return err
	}
	if st.storedLive {
		st.replaceStored = true
	}
	st.exists, st.deleted, st.touched = true, false, true
	st.version++
	if ev.OccurredAt.After(st.occurredAt) {
		st.occurredAt = ev.OccurredAt
	}
	st.deletedAt = time.Time{}
	st.hash = append([]byte(nil), ev.Hash[:]...)
	st.eventID = id
	st.kind = ev.Kind
	st.final = ev
	d.results[i] = OpResult{Status: status, EventID: idStr, Version: st.version}
	d.markChanged(ev.UserID)

	evRows := &d.evRows
	evRows.ids = append(evRows.ids, id)
	evRows.received = append(evRows.received, now)
	evRows.users = append(evRows.users, ev.UserID)
	evRows.sources = append(evRows.sources, int16(ev.Source))
	evRows.recordIDs = append(evRows.recordIDs, ev.VendorRecordID)
	evRows.kinds = append(evRows.kinds, ev.Kind)
	evRows.versions = append(evRows.versions, st.version)
	evRows.operations = append(evRows.operations, opUpsert)
	evRows.occurred = append(evRows.occurred, tsOrNull(ev.OccurredAt))
	evRows.hashes = append(evRows.hashes, st.hash)
	evRows.readingsCnt = append(evRows.readingsCnt, int32(len(ev.Readings)))

	payload, err := d.events.encode(ev, idStr, st.version, now)
	if err != nil {
		return fmt.Errorf("encode event %s: %w", idStr, err)
	}
	d.outbox.add(topics.Events, ev.UserID, payloadEvent, payload, op.TraceParent)
	return nil
}

// delete decides ops[i], a deletion of the record whose state is st.
func (d *decisions) delete(i int, op Op, st *recState, now time.Time) error {
	switch {
	case !st.exists && st.key.Source == biometricsv1.Source_SOURCE_HEALTHKIT:
		// A HealthKit deletion of a sample never stored (the
		// delete overtook the push, or the push failed): the
		// tombstone is written all the same, so the sample's
		// late or retried push is refused (record_deleted) rather
		// than stored as new. The result still says not found.
		d.results[i] = OpResult{DeleteStatus: persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND}
		st.kind, st.hash = healthKitTombstoneKind, []byte{}
	case !st.exists:
		d.results[i] = OpResult{DeleteStatus: persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND}
		return nil
	case st.deleted:
		d.results[i] = OpResult{DeleteStatus: persistencev1.DeleteStatus_DELETE_STATUS_ALREADY_DELETED, EventID: uuidString(st.eventID), Version: st.version}
		return nil
	}
	id, idStr, err := newEventID()
	if err != nil {
		return err
	}
	if st.storedLive {
		st.replaceStored = true
	}
	// A deletion always tombstones, even one dated before the
	// record's occurred_at: the source says it is gone now.
	deletedAt := now
	if !op.Delete.DeletedAt.IsZero() {
		deletedAt = record.Micros(op.Delete.DeletedAt)
	}
	st.exists, st.deleted, st.touched = true, true, true
	st.deletedAt = deletedAt
	st.version++
	st.eventID = id
	st.final = nil
	status := persistencev1.DeleteStatus_DELETE_STATUS_DELETED
	if d.results[i].DeleteStatus == persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND {
		status = persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND
	}
	d.results[i] = OpResult{DeleteStatus: status, EventID: idStr, Version: st.version}
	d.markChanged(st.key.UserID)

	evRows := &d.evRows
	evRows.ids = append(evRows.ids, id)
	evRows.received = append(evRows.received, now)
	evRows.users = append(evRows.users, st.key.UserID)
	evRows.sources = append(evRows.sources, int16(st.key.Source))
	evRows.recordIDs = append(evRows.recordIDs, st.key.VendorRecordID)
	evRows.kinds = append(evRows.kinds, st.kind)
	evRows.versions = append(evRows.versions, st.version)
	evRows.operations = append(evRows.operations, opDelete)
	evRows.occurred = append(evRows.occurred, tsOrNull(deletedAt))
	evRows.hashes = append(evRows.hashes, nil)
	evRows.readingsCnt = append(evRows.readingsCnt, 0)

	payload, err := proto.Marshal(&biometricsv1.BiometricEvent{
		EventId:        idStr,
		UserId:         st.key.UserID,
		Source:         st.key.Source,
		Kind:           st.kind,
		VendorRecordId: st.key.VendorRecordID,
		Operation:      biometricsv1.Operation_OPERATION_DELETE,
		Version:        st.version,
		OccurredAt:     timestamppb.New(deletedAt),
		ReceivedAt:     timestamppb.New(now),
	})
	if err != nil {
		return fmt.Errorf("encode event %s: %w", idStr, err)
	}
	if status == persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND {
		// A tombstone for a sample never stored: nobody
		// downstream ever saw it, so nothing is published.
		return nil
	}
	d.outbox.add(topics.Events, st.key.UserID, payloadEvent, payload, op.TraceParent)
	return nil
}

// bumpRows are the newer occurred_at times to store (bumpOccurredSQL).
type bumpRows struct {
	users, recordIDs []string
	sources          []int16
	occurred         []time.Time
}

// occurredBumps collects the newer times that came with duplicates of
// records the transaction does not otherwise write.
func occurredBumps(keys []record.Key, states map[record.Key]*recState) bumpRows {
	var bump bumpRows
	for _, k := range keys {
		if st := states[k]; st.occBumped && !st.touched {
			bump.users = append(bump.users, k.UserID)
			bump.sources = append(bump.sources, int16(k.Source))
			bump.recordIDs = append(bump.recordIDs, k.VendorRecordID)
			bump.occurred = append(bump.occurred, st.occurredAt)
		}
	}
	return bump
}

// rowSets are the rows a transaction that changed data writes, besides its
// events and outbox entries.
type rowSets struct {
	// del are the stored readings of replaced or deleted records
	// (deleteReadingsSQL).
	del struct {
		users, recordIDs, metrics []string
		sources                   []int16
		lo, hi                    []time.Time
	}
	// replaced are the records whose latest rows are recomputed
	// (recomputeLatestSQL).
	replaced struct {
		users, recordIDs []string
		sources          []int16
	}
	// recs are the records' new states (upsertRecordsSQL).
	recs recordRows
	// readings are the new versions' readings.
	readings *readingRows
	// latestRows are the newest reading per user and metric among them.
	latestRows readingRows
}

// collectRows collects the row sets of the records the transaction
// touched.
func collectRows(keys []record.Key, states map[record.Key]*recState) *rowSets {
	rs := &rowSets{}
	del, replaced, recs := &rs.del, &rs.replaced, &rs.recs
	total := 0
	for _, k := range keys {
		if st := states[k]; st.touched && st.final != nil {
			total += len(st.final.Readings)
		}
	}
	readings := newReadingRows(total)
	recs.grow(len(keys))
	best := map[[2]string]record.Latest{}
	var bestOrder [][2]string
	for _, k := range keys {
		st := states[k]
		if !st.touched {
			continue
		}
		if st.replaceStored {
			if len(st.storedMetrics) > 0 {
				del.users = append(del.users, k.UserID)
				del.sources = append(del.sources, int16(k.Source))
				del.recordIDs = append(del.recordIDs, k.VendorRecordID)
				del.metrics = append(del.metrics, strings.Join(st.storedMetrics, ","))
				del.lo = append(del.lo, st.storedMin)
				del.hi = append(del.hi, st.storedMax)
			}
			replaced.users = append(replaced.users, k.UserID)
			replaced.sources = append(replaced.sources, int16(k.Source))
			replaced.recordIDs = append(replaced.recordIDs, k.VendorRecordID)
		}
		var metrics []string
		var lo, hi pgtype.Timestamptz
		if ev := st.final; ev != nil {
			metrics = ev.Metrics()
			lo, hi = tsOrNull(ev.Readings[0].ObservedAt), tsOrNull(ev.Readings[0].ObservedAt)
			for seq := range ev.Readings {
				l := ev.LatestOf(seq)
				readings.add(k.UserID, l)
				readings.events = append(readings.events, st.eventID)
				if l.ObservedAt.Before(lo.Time) {
					lo.Time = l.ObservedAt
				}
				if l.ObservedAt.After(hi.Time) {
					hi.Time = l.ObservedAt
				}
				// Readings are sorted by metric, then time: the last of a
				// metric's run is the record's newest for that metric.
				if seq+1 < len(ev.Readings) && ev.Readings[seq+1].Metric == l.Metric {
					continue
				}
				bk := [2]string{k.UserID, l.Metric}
				if cur, ok := best[bk]; !ok {
					best[bk] = l
					bestOrder = append(bestOrder, bk)
				} else if record.CompareLatest(l, cur) > 0 {
					best[bk] = l
				}
			}
		}
		recs.add(st, metrics, lo, hi)
	}
	rs.readings = readings
	for _, bk := range bestOrder {
		rs.latestRows.add(bk[0], best[bk])
	}
	return rs
}

// writeRows writes the transaction's rows, events and outbox entries in
// one batch (a large write COPYs its new rows first: bulk.go) and returns
// the latest-value changes per user and metric (nil: removed) and the
// users' new commit sequence numbers.
func (s *Store) writeRows(ctx context.Context, tx pgx.Tx, d *decisions, rows *rowSets, bump bumpRows, now time.Time) (map[string]map[string]*record.Latest, map[string]int64, error) {
	del, replaced, recs, readings, latestRows := &rows.del, &rows.replaced, &rows.recs, rows.readings, &rows.latestRows
	evRows := &d.evRows
	// A key's events become one row per run (a push of a thousand samples
	// of one user is one outbox row).
	outbox := d.outbox.runs()
	d.outboxRows = len(outbox.keys)

	// Readings of replaced versions go first: the new version may reuse
	// their primary keys.
	bulk := s.useBulk(len(readings.users), len(evRows.ids))
	b := &pgx.Batch{}
	if len(del.users) > 0 {
		b.Queue(deleteReadingsSQL, del.users, del.sources, del.recordIDs, del.metrics, del.lo, del.hi)
	}
	if bulk {
		if len(b.QueuedQueries) > 0 {
			if err := tx.SendBatch(ctx, b).Close(); err != nil {
				return nil, nil, fmt.Errorf("delete replaced readings: %w", err)
			}
			b = &pgx.Batch{}
		}
		stored, err := s.copyBulk(ctx, tx, readings, evRows, recs, outbox, now)
		if err != nil {
			return nil, nil, err
		}
		if stored != nil {
			b.Queue(upsertRecordsSQL, stored...)
		}
	} else {
		if len(readings.users) > 0 {
			b.Queue(insertReadingsSQL, readings.readingArgs()...).Exec(func(ct pgconn.CommandTag) error {
				s.m.RowsWritten.WithLabelValues("readings").Add(float64(ct.RowsAffected()))
				return nil
			})
		}
		b.Queue(insertEventsSQL, evRows.ids, evRows.received, evRows.users, evRows.sources, evRows.recordIDs,
			evRows.kinds, evRows.versions, evRows.operations, evRows.occurred, evRows.hashes, evRows.readingsCnt)
		b.Queue(upsertRecordsSQL, recs.upsertArgs(now, nil)...)
	}
	if len(bump.users) > 0 {
		b.Queue(bumpOccurredSQL, bump.users, bump.sources, bump.recordIDs, bump.occurred)
	}

	latest := map[string]map[string]*record.Latest{}
	scanLatest := func(rows pgx.Rows) error {
		for rows.Next() {
			l, removed, user, err := scanLatestRow(rows)
			if err != nil {
				return err
			}
			if latest[user] == nil {
				latest[user] = map[string]*record.Latest{}
			}
			if removed {
				latest[user][l.Metric] = nil
			} else {
				latest[user][l.Metric] = &l
			}
		}
		return rows.Err()
	}
	if len(replaced.users) > 0 {
		b.Queue(recomputeLatestSQL, replaced.users, replaced.sources, replaced.recordIDs).Query(scanLatest)
	}
	if len(latestRows.users) > 0 {
		b.Queue(upsertLatestSQL, latestRows.args()...).Query(scanLatest)
	}
	seqs := map[string]int64{}
	b.Queue(bumpCommitsSQL, d.changedUserList).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var u string
			var seq int64
			if err := rows.Scan(&u, &seq); err != nil {
				return err
			}
			seqs[u] = seq
		}
		return rows.Err()
	})
	if !bulk {
		b.Queue(insertOutboxSQL, outbox.args()...)
	}
	b.Queue(notifySQL)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, nil, fmt.Errorf("write events: %w", err)
	}
	return latest, seqs, nil
}

// observeWrite counts a committed transaction's values and rows.
func (s *Store) observeWrite(keys []record.Key, states map[record.Key]*recState, d *decisions) {
	for _, k := range keys {
		if st := states[k]; st.touched && st.final != nil {
			for _, r := range st.final.Readings {
				s.m.ObserveValue(r.Metric, k.Source, r.Value)
			}
		}
	}
	s.m.RowsWritten.WithLabelValues("events").Add(float64(len(d.evRows.ids)))
	s.m.RowsWritten.WithLabelValues("outbox").Add(float64(d.outboxRows))
	s.m.OutboxWritten.WithLabelValues(topics.Events).Add(float64(len(d.outbox.keys)))
}

// userChanges are the latest-value changes of the changed users, for the
// cache, in the order the users changed.
func userChanges(changedUserList []string, seqs map[string]int64, latest map[string]map[string]*record.Latest) []record.UserChange {
	changes := make([]record.UserChange, 0, len(changedUserList))
	for _, u := range changedUserList {
		c := record.UserChange{UserID: u, Seq: seqs[u], Prev: seqs[u] - 1}
		for metric, l := range latest[u] {
			if l == nil {
				c.Removed = append(c.Removed, metric)
			} else {
				c.Set = append(c.Set, *l)
			}
		}
		changes = append(changes, c)
	}
	return changes
}

// healthKitTombstoneKind is the kind of a tombstone for a HealthKit sample
// that was deleted before it was ever stored (its type is unknown).
const healthKitTombstoneKind = "sample"

// loadRecords takes the users' advisory locks, reads their records and
// returns which of the users were erased.
func (s *Store) loadRecords(ctx context.Context, tx pgx.Tx, users []string, keys []record.Key, states map[record.Key]*recState) (map[string]bool, error) {
	us := make([]string, len(keys))
	ss := make([]int16, len(keys))
	vs := make([]string, len(keys))
	for i, k := range keys {
		us[i], ss[i], vs[i] = k.UserID, int16(k.Source), k.VendorRecordID
	}
	b := &pgx.Batch{}
	b.Queue(lockUsersSQL, lockKeys(users))
	b.Queue(selectRecordsSQL, us, ss, vs).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var (
				k       record.Key
				src     int16
				version int64
				hash    []byte
				id      pgtype.UUID
				deleted bool
				kind    string
				metrics []string
				lo, hi  pgtype.Timestamptz
				occ, da pgtype.Timestamptz
			)
			if err := rows.Scan(&k.UserID, &src, &k.VendorRecordID, &version, &hash, &id, &deleted, &kind, &metrics, &lo, &hi, &occ, &da); err != nil {
				return err
			}
			k.Source = biometricsv1.Source(src)
			st := states[k]
			if st == nil {
				continue
			}
			st.exists, st.version, st.hash, st.eventID, st.deleted, st.kind = true, version, hash, id, deleted, kind
			st.inDB = true
			st.storedLive = !deleted
			st.storedMetrics = metrics
			st.storedMin, st.storedMax = lo.Time, hi.Time
			if occ.Valid {
				st.occurredAt = occ.Time.UTC()
			}
			if da.Valid {
				st.deletedAt = da.Time.UTC()
			}
		}
		return rows.Err()
	})
	subjects := make([]string, len(users))
	bySubject := make(map[string]string, len(users))
	for i, u := range users {
		subjects[i] = s.subject(u)
		bySubject[subjects[i]] = u
	}
	erased := map[string]bool{}
	b.Queue(`SELECT subject FROM erased_users WHERE subject = ANY($1)`, subjects).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var sub string
			if err := rows.Scan(&sub); err != nil {
				return err
			}
			erased[bySubject[sub]] = true
		}
		return rows.Err()
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("lock users and load records: %w", err)
	}
	return erased, nil
}

// scanLatestRow scans (removed bool, latestColumns...).
func scanLatestRow(rows pgx.Rows) (l record.Latest, removed bool, user string, err error) {
	var (
		observed, start     pgtype.Timestamptz
		src                 pgtype.Int2
		recordID            pgtype.Text
		seq                 pgtype.Int4
		value               pgtype.Float8
		name, model, bundle pgtype.Text
	)
	if err := rows.Scan(&removed, &user, &l.Metric, &observed, &src, &recordID, &seq, &value, &start, &name, &model, &bundle); err != nil {
		return l, false, "", err
	}
	l.ObservedAt = observed.Time.UTC()
	if start.Valid {
		l.StartTime = start.Time.UTC()
	}
	l.Source = biometricsv1.Source(src.Int16)
	l.VendorRecordID = recordID.String
	l.Seq = seq.Int32
	l.Value = value.Float64
	l.Device = record.Device{Name: name.String, Model: model.String, BundleID: bundle.String}
	return l, removed, user, nil
}

// eventEncoder writes the outbox payloads of one batch, the published form
// of each record version. proto.Marshal keeps none of the messages it is
// given, so one set of messages is refilled for every event, and the
// payloads are cut from shared chunks: an upsert allocates neither messages
// nor a payload of its own.
type eventEncoder struct {
	ev                 biometricsv1.BiometricEvent
	received, occurred timestamppb.Timestamp
	readings           []biometricsv1.Reading
	ptrs               []*biometricsv1.Reading
	times              []timestamppb.Timestamp // per reading: observed, start
	devices            []biometricsv1.Device
	buf                []byte
}

// payloadChunk is the size of the chunks payloads are cut from; a new one
// starts when less than payloadRoom is left.
const (
	payloadChunk = 64 << 10
	payloadRoom  = 4 << 10
)

func timestamp(t time.Time) timestamppb.Timestamp {
	return timestamppb.Timestamp{Seconds: t.Unix(), Nanos: int32(t.Nanosecond())}
}

// encode returns the BiometricEvent of an upsert, marshaled: the event id,
// version and receipt time given, the readings' device only when set and
// their start and the event's time only when not zero. The bytes stay valid
// (and unchanged) after later calls.
func (e *eventEncoder) encode(ev *record.Event, id string, version int64, received time.Time) ([]byte, error) {
	n := len(ev.Readings)
	if len(e.readings) < n {
		e.readings = make([]biometricsv1.Reading, n)
		e.ptrs = make([]*biometricsv1.Reading, n)
		e.times = make([]timestamppb.Timestamp, 2*n)
		e.devices = make([]biometricsv1.Device, n)
	}
	e.received = timestamp(received)
	e.ev = biometricsv1.BiometricEvent{
		EventId:        id,
		UserId:         ev.UserID,
		Source:         ev.Source,
		Kind:           ev.Kind,
		VendorRecordId: ev.VendorRecordID,
		Operation:      biometricsv1.Operation_OPERATION_UPSERT,
		Version:        version,
		ReceivedAt:     &e.received,
		Readings:       e.ptrs[:n],
	}
	if !ev.OccurredAt.IsZero() {
		e.occurred = timestamp(ev.OccurredAt)
		e.ev.OccurredAt = &e.occurred
	}
	for i, r := range ev.Readings {
		observed, start := &e.times[2*i], &e.times[2*i+1]
		*observed = timestamp(r.ObservedAt)
		e.readings[i] = biometricsv1.Reading{Metric: r.Metric, Value: r.Value, Unit: r.Unit, ObservedAt: observed}
		if !r.StartTime.IsZero() {
			*start = timestamp(r.StartTime)
			e.readings[i].StartTime = start
		}
		if r.Device != (record.Device{}) {
			e.devices[i] = biometricsv1.Device{Name: r.Device.Name, Model: r.Device.Model, BundleId: r.Device.BundleID}
			e.readings[i].Device = &e.devices[i]
		}
		e.ptrs[i] = &e.readings[i]
	}
	if cap(e.buf)-len(e.buf) < payloadRoom {
		e.buf = make([]byte, 0, payloadChunk)
	}
	from := len(e.buf)
	b, err := proto.MarshalOptions{}.MarshalAppend(e.buf, &e.ev)
	if err != nil {
		return nil, err
	}
	e.buf = b
	return b[from:len(b):len(b)], nil
}
