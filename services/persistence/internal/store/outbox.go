package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/outboxrun"
	"github.com/biobridge/bridge/pkg/topics"
)

// leasable is true for an entry nobody holds and that is not waiting out
// a retry delay. An expired lease counts as not held: its entries return
// to the pool.
const leasable = `(lease_expires_at IS NULL OR lease_expires_at <= now()) AND (retry_after IS NULL OR retry_after <= now())`

// leaseHeadsSQL takes and locks the leasable heads, oldest first, from
// outbox_heads (every key's first pending entry, kept by triggers on
// outbox: see migration 0005). It walks heads in id order and stops after
// $1 leasable ones, passing over only the heads that are leased, waiting
// for a retry or locked by another leaser (or an ack) right now, so its
// cost does not grow with the number of pending keys and concurrent
// leasers take different heads instead of colliding. Only a head may start
// a lease: an entry whose predecessor of the same key is still pending,
// leased elsewhere or waiting for its retry is never handed out, so a
// key's entries are published in commit order.
const leaseHeadsSQL = `
SELECT o.id, o.key, o.event_count - o.sent
FROM outbox_heads h
JOIN outbox o ON o.id = h.head_id
WHERE (o.lease_expires_at IS NULL OR o.lease_expires_at <= now())
  AND (o.retry_after IS NULL OR o.retry_after <= now())
ORDER BY h.head_id
LIMIT $1
FOR UPDATE OF o SKIP LOCKED`

// runsSQL lists the entries following each locked head, so one lease can
// carry a run of a key's entries (still in order, still to one holder).
const runsSQL = `
SELECT x.id, x.key, x.ok, x.n
FROM unnest($1::text[], $2::int8[]) AS h(key, head)
CROSS JOIN LATERAL (
  SELECT id, key, ` + leasable + ` AS ok, event_count - sent AS n
  FROM outbox o WHERE o.key = h.key AND o.id > h.head ORDER BY id LIMIT $3
) x`

// leaseSQL takes the planned rows. attempts is not touched: a lease is
// not a publish attempt (an entry behind a slow head may be leased many
// times before it is ever sent); NackOutbox counts the sends that failed.
// lease_upto records how much of each row's run the lease hands out: all
// of it, except the part of row $5 beyond its first $6 unsent events.
const leaseSQL = `
UPDATE outbox SET lease_token = $2, lease_holder = $3, lease_expires_at = now() + $4::float8 * interval '1 second',
  retry_after = NULL, lease_upto = CASE WHEN id = $5 THEN sent + $6 ELSE event_count END
WHERE id = ANY($1) AND ` + leasable + `
RETURNING id, topic, key, payload_type, payload, traceparent, created_at, attempts, last_error,
  event_count, sent, lease_upto, extract(epoch FROM (lease_expires_at - clock_timestamp()))::float8`

// OutboxLease is a leased batch.
type OutboxLease struct {
	Entries []*persistencev1.OutboxEntry
	Token   string
	// Remaining is the time left on the lease by the database's clock,
	// measured just before the lease committed.
	Remaining time.Duration
}

// Lease leases up to max entries for d to holder: the heads of the keys
// with pending entries, extended by each key's following entries while
// room remains. A run (a row holding a transaction's events of one key)
// is one entry per event not yet acknowledged. It returns the entries in
// id order (per key, commit order) and the lease token, or no entries when
// nothing is available. Payloads are decoded (OutboxEntry event or
// connection_event).
func (s *Store) Lease(ctx context.Context, holder string, max int, d time.Duration) (OutboxLease, error) {
	return s.leaseRetrying(ctx, holder, max, d, false)
}

// LeaseRaw is Lease with every payload as its stored encoding, untouched
// and not decoded (OutboxEntry event_bytes or connection_event_bytes).
func (s *Store) LeaseRaw(ctx context.Context, holder string, max int, d time.Duration) (OutboxLease, error) {
	return s.leaseRetrying(ctx, holder, max, d, true)
}

func (s *Store) leaseRetrying(ctx context.Context, holder string, max int, d time.Duration, raw bool) (OutboxLease, error) {
	for attempt := 0; ; attempt++ {
		l, err := s.lease(ctx, holder, max, d, attempt >= 3, raw)
		if errors.Is(err, errRunChanged) || (err != nil && retryable(err)) {
			if attempt < 5 {
				continue
			}
		}
		if err != nil {
			return OutboxLease{}, err
		}
		s.m.OutboxLeased.Add(float64(len(l.Entries)))
		return l, nil
	}
}

// errRunChanged means an entry of a planned run stopped being leasable
// between planning and leasing (its old holder nacked it); retry.
var errRunChanged = errors.New("outbox run changed during lease")

func (s *Store) lease(ctx context.Context, holder string, max int, d time.Duration, headsOnly, raw bool) (_ OutboxLease, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return OutboxLease{}, fmt.Errorf("lease outbox: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	rows, err := tx.Query(ctx, leaseHeadsSQL, max)
	if err != nil {
		return OutboxLease{}, fmt.Errorf("lease outbox: find heads: %w", err)
	}
	type head struct {
		id   int64
		key  string
		left int // events not yet acknowledged
	}
	heads, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (head, error) {
		var h head
		err := r.Scan(&h.id, &h.key, &h.left)
		return h, err
	})
	if err != nil {
		return OutboxLease{}, fmt.Errorf("lease outbox: find heads: %w", err)
	}
	if len(heads) == 0 {
		return OutboxLease{}, tx.Commit(ctx)
	}
	// max counts entries, and a run is as many entries as it has events
	// left. Heads are taken oldest first while they fit; the oldest is
	// always taken, only part of it when it alone is larger than max (the
	// rest stays with the row, leased until this lease is acknowledged or
	// runs out). A head that does not fit is left for the next lease,
	// where it is older than any head taken after it.
	ids := make([]int64, 0, len(heads))
	var partial int64
	var partialTake int
	room := max
	var taken []head
	for _, h := range heads {
		switch {
		case h.left <= room:
			room -= h.left
		case len(taken) == 0:
			partial, partialTake, room = h.id, room, 0
		default:
			continue
		}
		ids = append(ids, h.id)
		taken = append(taken, h)
		if room == 0 {
			break
		}
	}
	if room > 0 && !headsOnly && partial == 0 {
		keys := make([]string, len(taken))
		headIDs := make([]int64, len(taken))
		for i, h := range taken {
			keys[i], headIDs[i] = h.key, h.id
		}
		rows, err := tx.Query(ctx, runsSQL, keys, headIDs, room)
		if err != nil {
			return OutboxLease{}, fmt.Errorf("lease outbox: find runs: %w", err)
		}
		type follower struct {
			id   int64
			key  string
			ok   bool
			left int
		}
		followers, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (follower, error) {
			var f follower
			err := r.Scan(&f.id, &f.key, &f.ok, &f.left)
			return f, err
		})
		if err != nil {
			return OutboxLease{}, fmt.Errorf("lease outbox: find runs: %w", err)
		}
		// Fill the room oldest first; a key's run stops at its first entry
		// that is not leasable or does not fit, so it stays contiguous.
		slices.SortFunc(followers, func(a, b follower) int { return cmp.Compare(a.id, b.id) })
		stopped := map[string]bool{}
		for _, f := range followers {
			if room == 0 {
				break
			}
			if stopped[f.key] {
				continue
			}
			if !f.ok || f.left > room {
				stopped[f.key] = true
				continue
			}
			ids = append(ids, f.id)
			room -= f.left
		}
	}

	token := uuid.New()
	rows, err = tx.Query(ctx, leaseSQL, ids, pgtype.UUID{Bytes: token, Valid: true}, holder, d.Seconds(), partial, partialTake)
	if err != nil {
		return OutboxLease{}, fmt.Errorf("lease outbox: %w", err)
	}
	// Each row also says what is left of the lease by the database's clock
	// at the moment it was updated (clock_timestamp, not the transaction's
	// start); the smallest is the one to count on.
	remaining := math.Inf(1)
	leased, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]*persistencev1.OutboxEntry, error) {
		var left float64
		es, err := scanOutboxRow(r, raw, &left)
		remaining = min(remaining, left)
		return es, err
	})
	if err != nil {
		return OutboxLease{}, fmt.Errorf("lease outbox: %w", err)
	}
	if len(leased) != len(ids) {
		// A run lost an entry in the middle: leasing the rest would let a
		// later entry overtake it. Plan again.
		return OutboxLease{}, errRunChanged
	}
	if err := tx.Commit(ctx); err != nil {
		return OutboxLease{}, fmt.Errorf("lease outbox: commit: %w", err)
	}
	entries := slices.Concat(leased...)
	slices.SortFunc(entries, func(a, b *persistencev1.OutboxEntry) int { return cmp.Compare(a.GetId(), b.GetId()) })
	return OutboxLease{Entries: entries, Token: token.String(), Remaining: secondsDuration(remaining)}, nil
}

// scanOutboxRow reads a row of leaseSQL's RETURNING list as its entries:
// one, or for a run the events from the first unacknowledged one up to
// what the lease hands out, event i of the run in row r being entry
// r + 1 + i. extra receives the columns after the entry's. raw keeps the
// payloads as stored instead of decoding them.
func scanOutboxRow(r pgx.CollectableRow, raw bool, extra ...any) ([]*persistencev1.OutboxEntry, error) {
	var (
		e                   persistencev1.OutboxEntry
		typ                 int16
		payload             []byte
		created             time.Time
		count, sent, leased int32
	)
	if err := r.Scan(append([]any{&e.Id, &e.Topic, &e.Key, &typ, &payload, &e.Traceparent, &created, &e.Attempts, &e.LastError,
		&count, &sent, &leased}, extra...)...); err != nil {
		return nil, err
	}
	e.CreatedAt = timestamppb.New(created)
	if typ != payloadEventRun {
		if err := setPayload(&e, typ, payload, raw); err != nil {
			return nil, err
		}
		return []*persistencev1.OutboxEntry{&e}, nil
	}
	events, err := outboxrun.Split(payload)
	if err == nil && len(events) != int(count) {
		err = fmt.Errorf("event run: %d events, event_count %d", len(events), count)
	}
	if err != nil {
		return nil, fmt.Errorf("outbox entry %d: %w", e.Id, err)
	}
	out := make([]*persistencev1.OutboxEntry, 0, leased-sent)
	for i := sent; i < leased; i++ {
		x := &persistencev1.OutboxEntry{Id: e.Id + 1 + int64(i), Topic: e.Topic, Key: e.Key, Traceparent: e.Traceparent, CreatedAt: e.CreatedAt}
		if i == sent {
			// The row's attempts and error are its first unacknowledged
			// event's (acknowledging events resets them).
			x.Attempts, x.LastError = e.Attempts, e.LastError
		}
		if err := setPayload(x, payloadEvent, events[i], raw); err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, nil
}

// setPayload sets e's payload of type typ: as stored when raw, else
// decoded.
func setPayload(e *persistencev1.OutboxEntry, typ int16, payload []byte, raw bool) error {
	switch {
	case raw && typ == payloadEvent:
		e.Payload = &persistencev1.OutboxEntry_EventBytes{EventBytes: payload}
		return nil
	case raw && typ == payloadConnection:
		e.Payload = &persistencev1.OutboxEntry_ConnectionEventBytes{ConnectionEventBytes: payload}
		return nil
	}
	switch typ {
	case payloadEvent:
		var ev biometricsv1.BiometricEvent
		if err := proto.Unmarshal(payload, &ev); err != nil {
			return fmt.Errorf("decode outbox entry %d: %w", e.Id, err)
		}
		e.Payload = &persistencev1.OutboxEntry_Event{Event: &ev}
	case payloadConnection:
		var ev biometricsv1.ConnectionEvent
		if err := proto.Unmarshal(payload, &ev); err != nil {
			return fmt.Errorf("decode outbox entry %d: %w", e.Id, err)
		}
		e.Payload = &persistencev1.OutboxEntry_ConnectionEvent{ConnectionEvent: &ev}
	default:
		return fmt.Errorf("outbox entry %d: unknown payload type %d", e.Id, typ)
	}
	return nil
}

// Ack deletes published entries held under token. Entries whose lease was
// taken over by someone else (a different token) are not touched or counted;
// an expired lease that nobody took over can still be acknowledged. For a
// run, acknowledging its first unacknowledged events moves the run on past
// them (the row goes with its last event); see ackRuns.
func (s *Store) Ack(ctx context.Context, token uuid.UUID, ids []int64) (int, error) {
	tok := pgtype.UUID{Bytes: token, Valid: true}
	// A run's row id is never an entry id: only single rows match here.
	ct, err := s.pool.Exec(ctx, `DELETE FROM outbox WHERE lease_token = $1 AND id = ANY($2) AND event_count = 1`, tok, ids)
	if err != nil {
		return 0, fmt.Errorf("ack outbox: %w", err)
	}
	n := int(ct.RowsAffected())
	if n < len(ids) {
		m, err := s.ackRuns(ctx, tok, ids)
		if err != nil {
			return n, err
		}
		n += m
	}
	s.m.OutboxAcked.Add(float64(n))
	return n, nil
}

// ackRuns applies an ack to the runs held under tok. A run moves on over
// the acknowledged events that directly follow its last acknowledged one
// (an ack that skipped one is applied up to the gap; the rest is sent
// again); its attempts and error, which were that event's, start again.
// A run acknowledged to its end is deleted; one acknowledged up to what
// this lease handed out, but not to its end, is released so the next lease
// takes its remaining events at once.
func (s *Store) ackRuns(ctx context.Context, tok pgtype.UUID, ids []int64) (_ int, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("ack outbox runs: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	rows, err := tx.Query(ctx, `SELECT id, event_count, sent, lease_upto FROM outbox
		WHERE lease_token = $1 AND event_count > 1 ORDER BY id FOR UPDATE`, tok)
	if err != nil {
		return 0, fmt.Errorf("ack outbox runs: %w", err)
	}
	type runRow struct {
		id                  int64
		count, sent, leased int32
	}
	runs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (runRow, error) {
		var x runRow
		err := r.Scan(&x.id, &x.count, &x.sent, &x.leased)
		return x, err
	})
	if err != nil {
		return 0, fmt.Errorf("ack outbox runs: %w", err)
	}
	if len(runs) == 0 {
		return 0, tx.Commit(ctx)
	}
	acked := make(map[int64]bool, len(ids))
	for _, id := range ids {
		acked[id] = true
	}
	var (
		n        int
		done     []int64
		moved    []int64
		sent     []int32
		released []bool
	)
	for _, r := range runs {
		i := r.sent
		for i < r.leased && acked[r.id+1+int64(i)] {
			i++
		}
		if i == r.sent {
			continue
		}
		n += int(i - r.sent)
		if i == r.count {
			done = append(done, r.id)
			continue
		}
		moved, sent, released = append(moved, r.id), append(sent, i), append(released, i == r.leased)
	}
	if len(done) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM outbox WHERE lease_token = $1 AND id = ANY($2)`, tok, done); err != nil {
			return 0, fmt.Errorf("ack outbox runs: %w", err)
		}
	}
	if len(moved) > 0 {
		if _, err := tx.Exec(ctx, `
			UPDATE outbox o SET sent = u.sent, attempts = 0, last_error = '',
			  lease_token = CASE WHEN u.release THEN NULL ELSE o.lease_token END,
			  lease_holder = CASE WHEN u.release THEN NULL ELSE o.lease_holder END,
			  lease_expires_at = CASE WHEN u.release THEN NULL ELSE o.lease_expires_at END
			FROM unnest($2::int8[], $3::int4[], $4::bool[]) AS u(id, sent, release)
			WHERE o.id = u.id AND o.lease_token = $1`, tok, moved, sent, released); err != nil {
			return 0, fmt.Errorf("ack outbox runs: %w", err)
		}
	}
	if slices.Contains(released, true) {
		// Wake long-polling leasers: the rest of a run is available.
		if _, err := tx.Exec(ctx, notifySQL); err != nil {
			return 0, fmt.Errorf("ack outbox runs: notify: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("ack outbox runs: commit: %w", err)
	}
	return n, nil
}

// renewSQL extends a lease that is still held: not expired by the
// database's clock and not taken over (the token is the fence).
const renewSQL = `
WITH renewed AS (
  UPDATE outbox SET lease_expires_at = now() + $2::float8 * interval '1 second'
  WHERE lease_token = $1 AND lease_expires_at > now()
  RETURNING greatest(lease_upto - sent, 1) AS n
)
SELECT coalesce(sum(n), 0), extract(epoch FROM (now() + $2::float8 * interval '1 second' - clock_timestamp()))::float8 FROM renewed`

// Renew extends the lease held under token to d from now, by the
// database's clock. It returns how many entries were renewed (0: the lease
// expired or was taken over) and the time left on it.
func (s *Store) Renew(ctx context.Context, token uuid.UUID, d time.Duration) (int, time.Duration, error) {
	var (
		n    int
		secs float64
	)
	if err := s.pool.QueryRow(ctx, renewSQL, pgtype.UUID{Bytes: token, Valid: true}, d.Seconds()).Scan(&n, &secs); err != nil {
		return 0, 0, fmt.Errorf("renew outbox lease: %w", err)
	}
	if n == 0 {
		return 0, 0, nil
	}
	return n, secondsDuration(secs), nil
}

func secondsDuration(secs float64) time.Duration {
	return max(0, time.Duration(secs*float64(time.Second)))
}

// nackSQL releases the given entries and every later entry of the same
// keys under the same lease: those cannot be published before the failed
// one anyway, and leaving them leased would let them overtake it once it
// is retried by another holder.
const nackSQL = `
WITH failed AS (
  SELECT key, min(id) AS first_id FROM outbox WHERE lease_token = $1 AND id = ANY($2) GROUP BY key
), released AS (
  UPDATE outbox o SET lease_token = NULL, lease_holder = NULL, lease_expires_at = NULL,
    retry_after = CASE WHEN $4::float8 > 0 THEN now() + $4::float8 * interval '1 second' END,
    last_error = CASE WHEN o.id = ANY($2) THEN $3 ELSE o.last_error END,
    attempts = CASE WHEN $5 AND o.id = f.first_id THEN o.attempts + 1 ELSE o.attempts END
  FROM failed f
  WHERE o.lease_token = $1 AND o.key = f.key AND o.id >= f.first_id
  RETURNING o.id
)
SELECT id FROM released WHERE id = ANY($2)`

// Nack returns entries held under token to the pool, not to be leased
// again before retryAfter. When attempted, the first of ids per key was
// sent and failed, and its attempt count grows by one. It returns how many
// of ids were released.
func (s *Store) Nack(ctx context.Context, token uuid.UUID, ids []int64, reason string, retryAfter time.Duration, attempted bool) (int, error) {
	tok := pgtype.UUID{Bytes: token, Valid: true}
	rowOf, err := s.entryRows(ctx, tok)
	if err != nil {
		return 0, fmt.Errorf("nack outbox: %w", err)
	}
	rowIDs := make([]int64, 0, len(ids))
	for _, id := range ids {
		if r := rowOf(id); !slices.Contains(rowIDs, r) {
			rowIDs = append(rowIDs, r)
		}
	}
	rows, err := s.pool.Query(ctx, nackSQL, tok, rowIDs, reason, retryAfter.Seconds(), attempted)
	if err != nil {
		return 0, fmt.Errorf("nack outbox: %w", err)
	}
	released, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("nack outbox: %w", err)
	}
	n := 0
	for _, id := range ids {
		if slices.Contains(released, rowOf(id)) {
			n++
		}
	}
	if n > 0 {
		// Wake long-polling leasers: the entries are available again (or
		// will be after their retry delay, which their poll timer covers).
		if _, err := s.pool.Exec(ctx, notifySQL); err != nil {
			s.logger.WarnContext(ctx, "notify after nack", "err", err)
		}
	}
	s.m.OutboxNacked.Add(float64(n))
	return n, nil
}

// entryRows returns the row of each entry id held under tok: a run's
// events map to the run's row, every other entry is its row.
func (s *Store) entryRows(ctx context.Context, tok pgtype.UUID) (func(int64) int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, event_count FROM outbox WHERE lease_token = $1 AND event_count > 1`, tok)
	if err != nil {
		return nil, err
	}
	type span struct{ first, last int64 }
	runs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (span, error) {
		var id int64
		var n int32
		err := r.Scan(&id, &n)
		return span{id, id + int64(n)}, err
	})
	if err != nil {
		return nil, err
	}
	return func(id int64) int64 {
		for _, r := range runs {
			if id > r.first && id <= r.last {
				return r.first
			}
		}
		return id
	}, nil
}

// OutboxStats describes the backlog, in entries (a run's events not yet
// acknowledged count one each).
type OutboxStats struct {
	Pending, Leased int64
	OldestPending   time.Time
}

// Stats returns the outbox backlog.
func (s *Store) Stats(ctx context.Context) (OutboxStats, error) {
	var st OutboxStats
	var oldest pgtype.Timestamptz
	err := s.pool.QueryRow(ctx, `SELECT coalesce(sum(event_count - sent), 0), coalesce(sum(event_count - sent) FILTER (WHERE lease_expires_at > now()), 0),
		min(created_at) FROM outbox`).
		Scan(&st.Pending, &st.Leased, &oldest)
	if err != nil {
		return st, fmt.Errorf("outbox stats: %w", err)
	}
	st.OldestPending = oldest.Time
	return st, nil
}

// ConnectionEvent is one connection lifecycle event to append.
type ConnectionEvent struct {
	Event       *biometricsv1.ConnectionEvent
	TraceParent string
}

// AppendConnectionEvents stores connection events in the outbox (topic
// biometrics.connections.v1, key = user id) in one transaction. Events
// without an id get one; an id seen before is not appended again. It
// returns the event ids in order.
func (s *Store) AppendConnectionEvents(ctx context.Context, events []ConnectionEvent) (_ []string, err error) {
	ids := make([]string, len(events))
	var users []string
	var rows struct {
		ids, users, vendors, reasons []string
		types                        []int16
		occurred                     []time.Time
		sequences                    []int64
	}
	var outbox outboxRows
	for i, ce := range events {
		ev := proto.Clone(ce.Event).(*biometricsv1.ConnectionEvent)
		if ev.GetEventId() == "" {
			id, err := uuid.NewV7()
			if err != nil {
				return nil, fmt.Errorf("generate event id: %w", err)
			}
			ev.EventId = id.String()
		}
		if ev.GetOccurredAt() == nil {
			ev.OccurredAt = timestamppb.Now()
		}
		ids[i] = ev.GetEventId()
		users = append(users, ev.GetUserId())
		rows.ids = append(rows.ids, ev.GetEventId())
		rows.users = append(rows.users, ev.GetUserId())
		rows.vendors = append(rows.vendors, ev.GetVendor())
		rows.reasons = append(rows.reasons, ev.GetReason())
		rows.types = append(rows.types, int16(ev.GetType()))
		rows.occurred = append(rows.occurred, ev.GetOccurredAt().AsTime())
		rows.sequences = append(rows.sequences, ev.GetSequence())
		payload, err := proto.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("encode connection event: %w", err)
		}
		outbox.add(topics.Connections, ev.GetUserId(), payloadConnection, payload, ce.TraceParent)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("append connection events: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if _, err := tx.Exec(ctx, lockUsersSQL, lockKeys(users)); err != nil {
		return nil, fmt.Errorf("append connection events: lock users: %w", err)
	}
	// Events of erased users are acknowledged and dropped: the user_erased
	// event was the user's last (a relay that forwards late must not put
	// the user back on Kafka).
	erased, err := s.erasedUsers(ctx, tx, users)
	if err != nil {
		return nil, fmt.Errorf("append connection events: %w", err)
	}
	keep := make([]bool, len(rows.ids))
	for i, u := range rows.users {
		keep[i] = !erased[u]
		if !keep[i] {
			s.m.WritesRefused.Inc()
		}
	}
	var live struct {
		ids, users, vendors, reasons []string
		types                        []int16
		occurred                     []time.Time
		sequences                    []int64
	}
	for i := range rows.ids {
		if keep[i] {
			live.ids = append(live.ids, rows.ids[i])
			live.users = append(live.users, rows.users[i])
			live.vendors = append(live.vendors, rows.vendors[i])
			live.reasons = append(live.reasons, rows.reasons[i])
			live.types = append(live.types, rows.types[i])
			live.occurred = append(live.occurred, rows.occurred[i])
			live.sequences = append(live.sequences, rows.sequences[i])
		}
	}
	// Only ids not seen before go to the outbox, in request order.
	r, err := tx.Query(ctx, `
		INSERT INTO connection_events (event_id, user_id, vendor, type, occurred_at, reason, sequence)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int2[], $5::timestamptz[], $6::text[], $7::int8[])
		ON CONFLICT (event_id) DO NOTHING
		RETURNING event_id`, live.ids, live.users, live.vendors, live.types, live.occurred, live.reasons, live.sequences)
	if err != nil {
		return nil, fmt.Errorf("append connection events: %w", err)
	}
	fresh, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("append connection events: %w", err)
	}
	isFresh := map[string]bool{}
	for _, id := range fresh {
		isFresh[id] = true
	}
	var out outboxRows
	for i, id := range rows.ids {
		if isFresh[id] {
			isFresh[id] = false // a repeated id within the request goes once
			out.add(outbox.topics[i], outbox.keys[i], outbox.types[i], outbox.payloads[i], outbox.traceparents[i])
		}
	}
	if len(out.keys) > 0 {
		b := &pgx.Batch{}
		b.Queue(insertOutboxSQL, out.args()...)
		b.Queue(notifySQL)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return nil, fmt.Errorf("append connection events: outbox: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("append connection events: commit: %w", err)
	}
	s.m.OutboxWritten.WithLabelValues(topics.Connections).Add(float64(len(out.keys)))
	return ids, nil
}
