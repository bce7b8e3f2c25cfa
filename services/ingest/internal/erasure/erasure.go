// Package erasure erases everything the bridge holds about one user
// (IngestService.DeleteUserData). Ingest orchestrates it because it is the
// one service that already talks to both owners of user data: the token
// broker (connections, tokens) and persistence (biometric data, audit,
// outbox). Each owner deletes its own rows through its own DeleteUserData.
//
// The erasure runs as steps recorded in ingest's schema (table erasures,
// keyed by the user's keyed pseudonym): connections first (the vendor
// grants are revoked and no new data can be fetched or routed to the
// user), then ingest's own jobs and backfills, then the biometric data
// (persistence marks the user erased in the same transaction, from then on
// every write for the user is refused, and enqueues the user_erased
// event). Every step can run again without harm, and the row says which
// step finished last, so a call that failed half-way (a crash, a timeout,
// an unavailable service) finishes on the caller's retry from where it
// stopped. A call for a user whose erasure completed is a no-op success.
package erasure

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/logging"
)

// The steps, in order. The erasures row records the last one finished.
const (
	stepConnections = 1
	stepJobs        = 2
	stepData        = 3
)

var stepNames = map[int]string{stepConnections: "connections", stepJobs: "jobs", stepData: "data"}

// Config configures an Eraser.
type Config struct {
	// Subject turns a user id into the pseudonym the erasures table keys
	// by (the HMAC keyed with LOG_PSEUDONYM_KEY).
	Subject func(userID string) string
	// AfterStep, when set, runs after each step is recorded, with the
	// step's name; an error stops the erasure there as a crash would
	// (tests).
	AfterStep func(step string) error
}

// Eraser erases users.
type Eraser struct {
	cfg         Config
	db          *pgxpool.Pool
	broker      tokensv1.TokenBrokerServiceClient
	persistence persistencev1.PersistenceServiceClient
	log         *slog.Logger

	erasures *prometheus.CounterVec
}

// New returns an Eraser.
func New(cfg Config, db *pgxpool.Pool, broker tokensv1.TokenBrokerServiceClient, persistence persistencev1.PersistenceServiceClient,
	reg prometheus.Registerer, logger *slog.Logger) *Eraser {
	if cfg.Subject == nil {
		cfg.Subject = logging.NewPseudonymizer(nil).Pseudonym
	}
	e := &Eraser{cfg: cfg, db: db, broker: broker, persistence: persistence, log: logger.With("component", "erasure"),
		erasures: promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_erasures_total",
			Help: "DeleteUserData calls, by outcome: completed, already_erased (a repeat) or failed (the caller retries; the erasure resumes).",
		}, []string{"outcome"}),
	}
	for _, o := range []string{"completed", "already_erased", "failed"} {
		e.erasures.WithLabelValues(o)
	}
	return e
}

// Result reports an erasure.
type Result struct {
	// AlreadyErased: an earlier call completed it; this one did nothing.
	AlreadyErased bool
	CompletedAt   time.Time
	// Revoked lists the vendors whose connection this call revoked.
	Revoked []string
}

// Erase erases userID (see the package comment). requestedBy is the
// caller recorded in the audit entry.
func (e *Eraser) Erase(ctx context.Context, userID, requestedBy string) (Result, error) {
	res, err := e.erase(ctx, userID, requestedBy)
	switch {
	case err != nil:
		e.erasures.WithLabelValues("failed").Inc()
		e.log.WarnContext(ctx, "erasure stopped; a retry resumes it", logging.UserID(userID), "err", err)
	case res.AlreadyErased:
		e.erasures.WithLabelValues("already_erased").Inc()
	default:
		e.erasures.WithLabelValues("completed").Inc()
		e.log.InfoContext(ctx, "user erased", logging.UserID(userID), "requested_by", requestedBy, "revoked", res.Revoked)
	}
	return res, err
}

func (e *Eraser) erase(ctx context.Context, userID, requestedBy string) (Result, error) {
	subject := e.cfg.Subject(userID)
	var done int
	var completed *time.Time
	err := e.db.QueryRow(ctx, `
		INSERT INTO ingest.erasures AS e (subject, requested_by) VALUES ($1, $2)
		ON CONFLICT (subject) DO UPDATE SET attempts = e.attempts + 1, updated_at = now()
		RETURNING step, completed_at`, subject, requestedBy).Scan(&done, &completed)
	if err != nil {
		return Result{}, fmt.Errorf("record erasure: %w", err)
	}
	if completed != nil {
		return Result{AlreadyErased: true, CompletedAt: *completed}, nil
	}
	var res Result
	steps := []struct {
		n  int
		fn func(context.Context) error
	}{
		{stepConnections, func(ctx context.Context) error {
			revoked, err := e.eraseConnections(ctx, userID)
			res.Revoked = revoked
			return err
		}},
		{stepJobs, func(ctx context.Context) error { return e.eraseJobs(ctx, userID, nil) }},
		{stepData, func(ctx context.Context) error { return e.eraseData(ctx, userID, requestedBy) }},
	}
	for _, st := range steps {
		if st.n <= done {
			continue
		}
		if err := st.fn(ctx); err != nil {
			return Result{}, fmt.Errorf("erasure step %s: %w", stepNames[st.n], err)
		}
		if _, err := e.db.Exec(ctx, `UPDATE ingest.erasures SET step = $2, updated_at = now() WHERE subject = $1 AND step < $2`,
			subject, st.n); err != nil {
			return Result{}, fmt.Errorf("record erasure step %s: %w", stepNames[st.n], err)
		}
		if e.cfg.AfterStep != nil {
			if err := e.cfg.AfterStep(stepNames[st.n]); err != nil {
				return Result{}, err
			}
		}
	}
	if err := e.db.QueryRow(ctx, `UPDATE ingest.erasures SET completed_at = now(), updated_at = now() WHERE subject = $1
		RETURNING completed_at`, subject).Scan(&res.CompletedAt); err != nil {
		return Result{}, fmt.Errorf("record erasure completion: %w", err)
	}
	return res, nil
}

// eraseConnections has the broker revoke and delete the user's
// connections, then drops the queued webhooks of those vendor accounts
// (they carry the vendor's id of the person). Webhooks that arrive later
// find no connection and are dropped by the worker.
func (e *Eraser) eraseConnections(ctx context.Context, userID string) ([]string, error) {
	resp, err := e.broker.DeleteUserData(ctx, &tokensv1.DeleteUserDataRequest{UserId: userID})
	if err != nil {
		return nil, fmt.Errorf("token broker: %w", err)
	}
	var revoked []string
	for _, r := range resp.GetRevocations() {
		revoked = append(revoked, r.GetVendor())
	}
	return revoked, e.eraseJobs(ctx, userID, resp.GetRevocations())
}

// eraseJobs deletes the user's jobs (whatever their state: a running job
// loses its row and its completion matches nothing), the webhooks of the
// given vendor accounts and the user's backfills, in one transaction.
func (e *Eraser) eraseJobs(ctx context.Context, userID string, accounts []*tokensv1.VendorRevocation) error {
	return pgx.BeginFunc(ctx, e.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM ingest.jobs WHERE payload->>'user_id' = $1 AND kind <> 'webhook'`, userID); err != nil {
			return fmt.Errorf("delete jobs: %w", err)
		}
		for _, a := range accounts {
			if a.GetVendorUserId() == "" {
				continue
			}
			if _, err := tx.Exec(ctx, `DELETE FROM ingest.jobs WHERE payload->>'user_id' = $1 AND kind = 'webhook' AND vendor = $2`,
				a.GetVendorUserId(), a.GetVendor()); err != nil {
				return fmt.Errorf("delete webhook jobs: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM ingest.backfills WHERE user_id = $1`, userID); err != nil {
			return fmt.Errorf("delete backfills: %w", err)
		}
		return nil
	})
}

// eraseData has persistence erase the biometric data and publish
// user_erased.
func (e *Eraser) eraseData(ctx context.Context, userID, requestedBy string) error {
	_, err := e.persistence.DeleteUserData(ctx, &persistencev1.DeleteUserDataRequest{UserId: userID, RequestedBy: requestedBy})
	if err != nil {
		return fmt.Errorf("persistence: %w", err)
	}
	return nil
}

// ErrErased is returned by Check for a user being or already erased.
var ErrErased = errors.New("user erased")

// Check returns ErrErased when an erasure of userID was started (finished
// or not): nothing new is accepted for the user from then on.
func (e *Eraser) Check(ctx context.Context, userID string) error {
	var one int
	err := e.db.QueryRow(ctx, `SELECT 1 FROM ingest.erasures WHERE subject = $1`, e.cfg.Subject(userID)).Scan(&one)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("check erasure: %w", err)
	}
	return ErrErased
}
