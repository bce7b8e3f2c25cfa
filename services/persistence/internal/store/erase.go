package store

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/pkg/topics"
)

// ReasonUserErased rejects an upsert for a user whose data was erased.
const ReasonUserErased = "user_erased"

// MethodDeleteUserData is the method recorded in the audit entry of an
// erasure.
const MethodDeleteUserData = "DeleteUserData"

// SetSubjects sets the function that turns a user id into the pseudonym
// erasure keeps (erased_users, pseudonymized audit entries). The server
// passes the HMAC keyed with LOG_PSEUDONYM_KEY; the default is keyed with
// a random per-process key, enough for tests that run in one process.
func (s *Store) SetSubjects(fn func(userID string) string) { s.subject = fn }

// Erasure reports what EraseUser did.
type Erasure struct {
	// Erased is false when the user was already erased (nothing changed).
	Erased bool
	// EventID is the id of the user_erased connection event.
	EventID string
	// Deleted counts the rows deleted, by table.
	Deleted map[string]int64
}

// eraseSteps delete or pseudonymize everything the schema holds about one
// user, in this order, inside the erasure transaction ($1 the user id, $2
// the pseudonym). Outbox rows that a publisher holds a live lease on stay:
// they are being published right now and are acknowledged (deleted) after;
// deleting them under the publisher could let the user_erased entry overtake
// them.
var eraseSteps = []struct{ table, sql string }{
	{"readings", `DELETE FROM readings WHERE user_id = $1`},
	{"latest", `DELETE FROM latest WHERE user_id = $1`},
	{"records", `DELETE FROM records WHERE user_id = $1`},
	{"events", `DELETE FROM events WHERE user_id = $1`},
	{"user_commits", `DELETE FROM user_commits WHERE user_id = $1`},
	{"connection_events", `DELETE FROM connection_events WHERE user_id = $1`},
	{"outbox", `DELETE FROM outbox WHERE key = $1 AND (lease_token IS NULL OR lease_expires_at < now())`},
	{"audit_log", `UPDATE audit_log SET user_id = $2 WHERE user_id = $1`},
}

// EraseUser erases userID in one transaction under the user's lock, so it
// is ordered with every write of the user: a write committed before it is
// erased with the rest, a write after it finds the user in erased_users and
// is refused. The transaction marks the user erased, deletes the user's
// rows (see eraseSteps), replaces the user id in past audit entries with
// the pseudonym, audits the erasure itself (who asked, whom, when: no
// data) and enqueues one user_erased event on biometrics.connections.v1
// whose sequence follows every connection event published for the user.
// A second call finds the mark and changes nothing.
func (s *Store) EraseUser(ctx context.Context, userID, requestedBy string) (_ Erasure, err error) {
	subject := s.subject(userID)
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return Erasure{}, fmt.Errorf("erase user: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if _, err := tx.Exec(ctx, lockUsersSQL, lockKeys([]string{userID})); err != nil {
		return Erasure{}, fmt.Errorf("erase user: lock: %w", err)
	}
	tag, err := tx.Exec(ctx, `INSERT INTO erased_users (subject) VALUES ($1) ON CONFLICT DO NOTHING`, subject)
	if err != nil {
		return Erasure{}, fmt.Errorf("erase user: mark: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return Erasure{}, tx.Commit(ctx)
	}
	var last int64
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(sequence), 0) FROM connection_events WHERE user_id = $1`, userID).Scan(&last); err != nil {
		return Erasure{}, fmt.Errorf("erase user: last connection event: %w", err)
	}
	out := Erasure{Erased: true, Deleted: map[string]int64{}}
	for _, st := range eraseSteps {
		args := []any{userID}
		if st.table == "audit_log" {
			args = append(args, subject)
		}
		tag, err := tx.Exec(ctx, st.sql, args...)
		if err != nil {
			return Erasure{}, fmt.Errorf("erase user: %s: %w", st.table, err)
		}
		out.Deleted[st.table] = tag.RowsAffected()
	}
	now := time.Now()
	if _, err := tx.Exec(ctx, `INSERT INTO audit_log (at, caller, user_id, method) VALUES ($1, $2, $3, $4)`,
		now, requestedBy, subject, MethodDeleteUserData); err != nil {
		return Erasure{}, fmt.Errorf("erase user: audit: %w", err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return Erasure{}, fmt.Errorf("erase user: event id: %w", err)
	}
	out.EventID = id.String()
	payload, err := proto.Marshal(&biometricsv1.ConnectionEvent{
		EventId:    out.EventID,
		UserId:     userID,
		Type:       biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_USER_ERASED,
		OccurredAt: timestamppb.New(now),
		Sequence:   last + 1,
	})
	if err != nil {
		return Erasure{}, fmt.Errorf("erase user: encode event: %w", err)
	}
	var ob outboxRows
	ob.add(topics.Connections, userID, payloadConnection, payload, "")
	b := &pgx.Batch{}
	b.Queue(insertOutboxSQL, ob.args()...)
	b.Queue(notifySQL)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return Erasure{}, fmt.Errorf("erase user: outbox: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Erasure{}, fmt.Errorf("erase user: commit: %w", err)
	}
	s.m.UsersErased.Inc()
	s.m.OutboxWritten.WithLabelValues(topics.Connections).Inc()
	return out, nil
}

// erasedUsers returns which of users are erased, reading inside q (a
// transaction that holds the users' locks, so the answer holds until it
// commits).
func (s *Store) erasedUsers(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, users []string) (map[string]bool, error) {
	subjects := make([]string, len(users))
	bySubject := make(map[string]string, len(users))
	for i, u := range users {
		subjects[i] = s.subject(u)
		bySubject[subjects[i]] = u
	}
	rows, err := q.Query(ctx, `SELECT subject FROM erased_users WHERE subject = ANY($1)`, subjects)
	if err != nil {
		return nil, fmt.Errorf("check erased users: %w", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("check erased users: %w", err)
	}
	out := make(map[string]bool, len(found))
	for _, sub := range found {
		out[bySubject[sub]] = true
	}
	return out, nil
}

// IsErased reports whether userID was erased.
func (s *Store) IsErased(ctx context.Context, userID string) (bool, error) {
	m, err := s.erasedUsers(ctx, s.pool, []string{userID})
	return m[userID], err
}
