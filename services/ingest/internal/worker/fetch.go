package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/services/ingest/internal/readings"
	"github.com/biobridge/bridge/services/ingest/internal/store"
	"github.com/biobridge/bridge/services/ingest/internal/webhook"
	"github.com/biobridge/bridge/services/ingest/oura"
	"github.com/biobridge/bridge/services/ingest/vendorhttp"
	"github.com/biobridge/bridge/services/ingest/whoop"
)

// KindWebhook is the job kind of a vendor notification.
const KindWebhook = "webhook"

// Vendors, as stored in store.vendor and sent to the token broker.
const (
	VendorWhoop = "whoop"
	VendorOura  = "oura"
)

// Outcomes of a webhook job.
const (
	OutcomeStored          = "stored"
	OutcomeUnchanged       = "unchanged"
	OutcomeRejected        = "rejected"
	OutcomeNoReadings      = "no_readings"
	OutcomeDeleted         = "deleted"
	OutcomeAlreadyDeleted  = "already_deleted"
	OutcomeNotFound        = "not_found"
	OutcomeUnknownUser     = "unknown_user"
	OutcomeInactive        = "connection_inactive"
	OutcomeUnscorable      = "unscorable"
	OutcomeUnsupported     = "unsupported"
	OutcomePendingExpired  = "pending_score_expired"
	OutcomeIncompleteEntry = "incomplete_record"
)

// The webhook handler's defaults, for the zero fields of a FetchConfig.
const (
	DefaultPendingDelay  = 5 * time.Minute
	DefaultPendingMaxAge = 24 * time.Hour
)

// FetchConfig tunes the webhook handler; a zero field takes its Default.
type FetchConfig struct {
	// PendingDelay is how long to wait before looking at a PENDING_SCORE
	// record again.
	PendingDelay time.Duration
	// PendingMaxAge is how long after the webhook a pending record is
	// still waited for; WHOOP sends another *.updated when it scores the
	// record, so giving up later loses nothing.
	PendingMaxAge time.Duration
}

// Arrivals hears of new data stored for a connection (staleness).
type Arrivals interface {
	Note(userID, vendor string)
}

// Fetcher handles webhook jobs: it resolves the vendor user, fetches the
// referenced record with the user's token, normalizes it and writes it (or
// deletes it) through persistence.
type Fetcher struct {
	cfg         FetchConfig
	tokens      tokensv1.TokenBrokerServiceClient
	persistence persistencev1.PersistenceServiceClient
	whoop       *whoop.API
	oura        *oura.API
	logger      *slog.Logger
	arrivals    Arrivals

	skipped      *prometheus.CounterVec
	unknownUsers *prometheus.CounterVec
	writes       *prometheus.CounterVec
	rejected     *prometheus.CounterVec
}

// NewFetcher builds the webhook handler.
func NewFetcher(cfg FetchConfig, tokens tokensv1.TokenBrokerServiceClient, persistence persistencev1.PersistenceServiceClient,
	whoopAPI *whoop.API, ouraAPI *oura.API, reg prometheus.Registerer, logger *slog.Logger) *Fetcher {
	if cfg.PendingDelay <= 0 {
		cfg.PendingDelay = DefaultPendingDelay
	}
	if cfg.PendingMaxAge <= 0 {
		cfg.PendingMaxAge = DefaultPendingMaxAge
	}
	f := &Fetcher{
		cfg: cfg, tokens: tokens, persistence: persistence, whoop: whoopAPI, oura: ouraAPI, logger: logger,
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_vendor_readings_skipped_total",
			Help: "Vendor figures not stored because the catalog rejects them, by vendor, metric and reason.",
		}, []string{"vendor", "metric", "reason"}),
		unknownUsers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_webhooks_unknown_user_total",
			Help: "Notifications for vendor users with no connection (acknowledged and dropped).",
		}, []string{"vendor"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_vendor_records_total",
			Help: "Vendor records handed to persistence, by vendor, kind and result (inserted, updated, duplicate, rejected, deleted, ...).",
		}, []string{"vendor", "kind", "result"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_vendor_tokens_rejected_total",
			Help: "Vendor calls that found the access token refused (401) and asked the token broker for a new one.",
		}, []string{"vendor"}),
	}
	if reg != nil {
		reg.MustRegister(f.skipped, f.unknownUsers, f.writes, f.rejected)
	}
	return f
}

// SetArrivals makes the fetcher report every write that stored new data
// (inserted or updated, not unchanged) to a.
func (f *Fetcher) SetArrivals(a Arrivals) { f.arrivals = a }

func (f *Fetcher) noteArrival(user, vendor string) {
	if f.arrivals != nil {
		f.arrivals.Note(user, vendor)
	}
}

// Handle implements Handler for KindWebhook.
func (f *Fetcher) Handle(ctx context.Context, j store.Job) (string, error) {
	switch j.Vendor {
	case VendorWhoop:
		var ev webhook.WhoopEvent
		if err := json.Unmarshal(j.Payload, &ev); err != nil {
			return "", &Permanent{Reason: "unreadable payload", Err: err}
		}
		return f.whoopEvent(ctx, j, ev)
	case VendorOura:
		var ev webhook.OuraEvent
		if err := json.Unmarshal(j.Payload, &ev); err != nil {
			return "", &Permanent{Reason: "unreadable payload", Err: err}
		}
		return f.ouraEvent(ctx, j, ev)
	}
	return "", &Permanent{Reason: "unknown vendor " + j.Vendor}
}

func (f *Fetcher) whoopEvent(ctx context.Context, j store.Job, ev webhook.WhoopEvent) (string, error) {
	if !ev.Supported() {
		return OutcomeUnsupported, nil
	}
	conn, outcome, err := f.resolve(ctx, VendorWhoop, ev.VendorUserID())
	if conn.user == "" {
		return outcome, err
	}
	if ev.Action() == webhook.WhoopDeleted {
		// A deletion needs no token: it is applied even while the
		// connection is broken.
		id := ev.ID
		if ev.Resource() == webhook.WhoopRecovery {
			id = whoop.RecoveryRecordID(ev.ID)
		}
		return f.delete(ctx, VendorWhoop, ev.Resource(), conn.user, biometricsv1.Source_SOURCE_WHOOP, id)
	}
	if conn.broken {
		return "", conn.park()
	}
	outcome, err = f.withToken(ctx, conn.user, VendorWhoop, func(token string) (string, error) {
		return f.whoopFetch(ctx, j, ev, conn.user, token)
	})
	return conn.settle(outcome, err)
}

// whoopFetch fetches, normalizes and writes the record ev names. Vendor
// errors are returned as they are (withToken looks for a rejected token).
func (f *Fetcher) whoopFetch(ctx context.Context, j store.Job, ev webhook.WhoopEvent, user, token string) (string, error) {
	switch ev.Resource() {
	case webhook.WhoopSleep:
		s, err := f.whoop.Sleep(ctx, token, ev.ID)
		if err != nil {
			return "", err
		}
		if done, outcome, err := f.scoreState(j, s.ScoreState); done {
			return outcome, err
		}
		n, err := whoop.NormalizeSleep(user, s)
		if err != nil {
			return OutcomeIncompleteEntry, nil
		}
		return f.write(ctx, VendorWhoop, n.Event, n.Skipped)
	case webhook.WhoopWorkout:
		w, err := f.whoop.Workout(ctx, token, ev.ID)
		if err != nil {
			return "", err
		}
		if done, outcome, err := f.scoreState(j, w.ScoreState); done {
			return outcome, err
		}
		n, err := whoop.NormalizeWorkout(user, w)
		if err != nil {
			return OutcomeIncompleteEntry, nil
		}
		return f.write(ctx, VendorWhoop, n.Event, n.Skipped)
	case webhook.WhoopRecovery:
		// v2: the webhook names the sleep; the sleep names the cycle; the
		// cycle has the recovery.
		s, err := f.whoop.Sleep(ctx, token, ev.ID)
		if err != nil {
			return "", err
		}
		if s.CycleID == 0 {
			return OutcomeIncompleteEntry, nil
		}
		r, err := f.whoop.CycleRecovery(ctx, token, s.CycleID)
		if err != nil {
			return "", err
		}
		if done, outcome, err := f.scoreState(j, r.ScoreState); done {
			return outcome, err
		}
		n, err := whoop.NormalizeRecovery(user, s, r)
		if err != nil {
			return OutcomeIncompleteEntry, nil
		}
		return f.write(ctx, VendorWhoop, n.Event, n.Skipped)
	}
	return OutcomeUnsupported, nil
}

// scoreState decides what a WHOOP score state means for the job: a
// pending score is waited for (not counted as a failed attempt) until
// PendingMaxAge, an unscorable record has nothing to store.
func (f *Fetcher) scoreState(j store.Job, state string) (done bool, outcome string, err error) {
	switch state {
	case whoop.PendingScore:
		if time.Since(j.CreatedAt) > f.cfg.PendingMaxAge {
			return true, OutcomePendingExpired, nil
		}
		return true, "", &Retry{After: f.cfg.PendingDelay, Reason: "pending_score"}
	case whoop.Unscorable:
		return true, OutcomeUnscorable, nil
	}
	return false, "", nil
}

func (f *Fetcher) ouraEvent(ctx context.Context, _ store.Job, ev webhook.OuraEvent) (string, error) {
	if !oura.Supported(ev.DataType) {
		return OutcomeUnsupported, nil
	}
	conn, outcome, err := f.resolve(ctx, VendorOura, ev.UserID)
	if conn.user == "" {
		return outcome, err
	}
	if ev.EventType == webhook.OuraDelete {
		return f.delete(ctx, VendorOura, ev.DataType, conn.user, biometricsv1.Source_SOURCE_OURA, ev.ObjectID)
	}
	if conn.broken {
		return "", conn.park()
	}
	outcome, err = f.withToken(ctx, conn.user, VendorOura, func(token string) (string, error) {
		d, err := f.oura.Document(ctx, token, ev.DataType, ev.ObjectID)
		if err != nil {
			return "", err
		}
		if d.ID == "" {
			d.ID = ev.ObjectID
		}
		n, err := oura.Normalize(conn.user, ev.DataType, d, ev.Time())
		if err != nil {
			return OutcomeIncompleteEntry, nil
		}
		return f.write(ctx, VendorOura, n.Event, n.Skipped)
	})
	return conn.settle(outcome, err)
}

// connection is what a webhook job learned of the vendor user's connection.
type connection struct {
	user string
	// generation is the connection's connected_at.
	generation time.Time
	// broken: the vendor rejected the refresh token; the user must reconnect.
	broken bool
}

// ReasonConnectionBroken is why jobs are parked while their connection is
// broken (shown in ListJobs).
const ReasonConnectionBroken = "connection_broken: waiting for the user to reconnect"

// park sets the job aside until the user reconnects (a newer generation).
func (c connection) park() error {
	return &Park{UserID: c.user, Generation: c.generation, Reason: ReasonConnectionBroken}
}

// settle turns the result of a fetch into the job's fate: a connection
// that broke on the way parks the job, a revoked one ends it, a failed
// vendor call is judged by vendorOutcome.
func (c connection) settle(outcome string, err error) (string, error) {
	switch {
	case err == nil:
		return outcome, nil
	case errors.Is(err, errConnectionBroken):
		return "", c.park()
	case errors.Is(err, errConnectionGone):
		return OutcomeInactive, nil
	case vendorhttp.KindOf(err) != 0:
		return vendorOutcome(err)
	}
	return outcome, err
}

// resolve maps the vendor user to the internal user and its connection.
// conn.user is "" when the job ends here (outcome, nil) or must be retried
// (err).
func (f *Fetcher) resolve(ctx context.Context, vendor, vendorUserID string) (conn connection, outcome string, err error) {
	resp, err := f.tokens.ResolveVendorUser(ctx, &tokensv1.ResolveVendorUserRequest{Vendor: vendor, VendorUserId: vendorUserID})
	if err != nil {
		if status.Code(err) == codes.NotFound {
			// Nobody connected this vendor account (or the connection was
			// deleted): retrying cannot help. The vendor id is an
			// identifier too, so it is logged only as a pseudonym.
			f.unknownUsers.WithLabelValues(vendor).Inc()
			f.logger.InfoContext(ctx, "notification for a vendor user without a connection",
				slog.String("vendor", vendor), logging.UserID(vendor+":"+vendorUserID))
			return connection{}, OutcomeUnknownUser, nil
		}
		return connection{}, "", grpcFailure("resolve vendor user", err)
	}
	conn = connection{user: resp.GetUserId(), generation: resp.GetConnectedAt().AsTime()}
	switch resp.GetStatus() {
	case tokensv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE:
	case tokensv1.ConnectionStatus_CONNECTION_STATUS_BROKEN:
		conn.broken = true
	default:
		// Revoked: the user chose to stop sharing this vendor's data.
		return connection{}, OutcomeInactive, nil
	}
	return conn, "", nil
}

// Why token gives no token.
var (
	// errConnectionBroken: the vendor rejected the refresh token; the
	// user must reconnect.
	errConnectionBroken = errors.New("vendor connection broken")
	// errConnectionGone: revoked or deleted.
	errConnectionGone = errors.New("vendor connection revoked")
)

// token asks the broker for the user's access token. rejected, when not
// empty, is the token the vendor just refused: the broker refreshes early
// if it is still the current one, or hands out its replacement.
func (f *Fetcher) token(ctx context.Context, user, vendor, rejected string) (string, error) {
	resp, err := f.tokens.GetAccessToken(ctx, &tokensv1.GetAccessTokenRequest{UserId: user, Vendor: vendor, RejectedAccessToken: rejected})
	if err != nil {
		switch status.Code(err) {
		case codes.FailedPrecondition:
			if st, _ := status.FromError(err); apperr.ReasonFromStatus(st) == "connection_broken" {
				return "", errConnectionBroken
			}
			return "", errConnectionGone
		case codes.NotFound:
			return "", errConnectionGone
		}
		return "", grpcFailure("get access token", err)
	}
	return resp.GetAccessToken(), nil
}

// withToken runs call with the user's access token. When the vendor
// refuses the token (it can invalidate tokens long before their expiry:
// a password change, a grant rotated elsewhere), the broker is told which
// token was refused, and call runs once more at once with the token the
// broker hands out then. The broker refreshes at most once for any number
// of jobs reporting the same token, and the job spends no attempt on it.
// call must return vendor errors unconverted.
func (f *Fetcher) withToken(ctx context.Context, user, vendor string, call func(token string) (string, error)) (string, error) {
	token, err := f.token(ctx, user, vendor, "")
	if err != nil {
		return "", err
	}
	outcome, err := call(token)
	if !vendorhttp.IsTokenRejected(err) {
		return outcome, err
	}
	f.rejected.WithLabelValues(vendor).Inc()
	if token, err = f.token(ctx, user, vendor, token); err != nil {
		return "", err
	}
	return call(token)
}

func (f *Fetcher) write(ctx context.Context, vendor string, ev *persistencev1.EventInput, skipped []readings.Skipped) (string, error) {
	for _, s := range skipped {
		f.skipped.WithLabelValues(vendor, s.Metric, s.Reason).Inc()
	}
	if len(ev.GetReadings()) == 0 {
		f.writes.WithLabelValues(vendor, ev.GetKind(), OutcomeNoReadings).Inc()
		return OutcomeNoReadings, nil
	}
	resp, err := f.persistence.WriteEvents(ctx, &persistencev1.WriteEventsRequest{Events: []*persistencev1.EventInput{ev}})
	if err != nil {
		return "", grpcFailure("write events", err)
	}
	if len(resp.GetResults()) != 1 {
		return "", fmt.Errorf("write events: %d results for 1 event", len(resp.GetResults()))
	}
	r := resp.GetResults()[0]
	for _, rr := range r.GetRejectedReadings() {
		f.skipped.WithLabelValues(vendor, rr.GetMetric(), rr.GetReason()).Inc()
	}
	switch r.GetStatus() {
	case persistencev1.WriteStatus_WRITE_STATUS_INSERTED:
		f.writes.WithLabelValues(vendor, ev.GetKind(), "inserted").Inc()
		f.noteArrival(ev.GetUserId(), vendor)
		return OutcomeStored, nil
	case persistencev1.WriteStatus_WRITE_STATUS_UPDATED:
		f.writes.WithLabelValues(vendor, ev.GetKind(), "updated").Inc()
		f.noteArrival(ev.GetUserId(), vendor)
		return OutcomeStored, nil
	case persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE:
		f.writes.WithLabelValues(vendor, ev.GetKind(), "duplicate").Inc()
		return OutcomeUnchanged, nil
	}
	f.writes.WithLabelValues(vendor, ev.GetKind(), "rejected").Inc()
	f.logRejection(ctx, vendor, ev.GetKind(), r.GetReason())
	return OutcomeRejected, nil
}

// logRejection logs a record persistence refused. An older copy arriving
// after a newer version or a deletion (stale_version, record_deleted) is the
// normal outcome of reconciliation and backfill overlapping live webhooks,
// so only other reasons are warnings; the writes metric counts them all.
func (f *Fetcher) logRejection(ctx context.Context, vendor, kind, reason string) {
	level := slog.LevelWarn
	if reason == "stale_version" || reason == "record_deleted" {
		level = slog.LevelDebug
	}
	f.logger.Log(ctx, level, "persistence rejected a vendor record", slog.String("vendor", vendor),
		slog.String("kind", kind), slog.String("reason", reason))
}

func (f *Fetcher) delete(ctx context.Context, vendor, kind, user string, source biometricsv1.Source, id string) (string, error) {
	resp, err := f.persistence.DeleteRecords(ctx, &persistencev1.DeleteRecordsRequest{
		Records: []*persistencev1.RecordRef{{UserId: user, Source: source, VendorRecordId: id}},
	})
	if err != nil {
		return "", grpcFailure("delete records", err)
	}
	if len(resp.GetResults()) != 1 {
		return "", fmt.Errorf("delete records: %d results for 1 record", len(resp.GetResults()))
	}
	outcome := OutcomeNotFound
	switch resp.GetResults()[0].GetStatus() {
	case persistencev1.DeleteStatus_DELETE_STATUS_DELETED:
		outcome = OutcomeDeleted
	case persistencev1.DeleteStatus_DELETE_STATUS_ALREADY_DELETED:
		outcome = OutcomeAlreadyDeleted
	}
	f.writes.WithLabelValues(vendor, kind, outcome).Inc()
	return outcome, nil
}

// vendorOutcome turns a failed vendor call into the job's fate.
func vendorOutcome(err error) (string, error) {
	var ve *vendorhttp.Error
	if !errors.As(err, &ve) {
		return "", err // cancellation and the like: transient
	}
	switch ve.Kind {
	case vendorhttp.NotFound:
		// Deleted since the notification (its delete webhook follows).
		return OutcomeNotFound, nil
	case vendorhttp.RateLimited:
		return "", &Retry{After: ve.RetryAfter, Reason: "rate_limited", Detail: ve.Error()}
	case vendorhttp.Permanent:
		return "", &Permanent{Reason: "vendor answer unusable", Err: err}
	}
	// Unavailable, Unauthorized: a failed attempt, at least RetryAfter later.
	return "", &Retry{After: ve.RetryAfter, Count: true, Reason: "vendor_" + ve.Kind.String(), Detail: ve.Error()}
}

// grpcFailure turns a failed internal call into the job's fate: transient
// trouble is retried (honouring the server's RetryInfo); anything else is
// a failed attempt too, because it is usually configuration an operator
// fixes before retrying the dead job.
func grpcFailure(what string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", what, err)
	}
	after, _ := apperr.RetryAfterFromStatus(st)
	reason := st.Code().String()
	if r := apperr.ReasonFromStatus(st); r != "" {
		reason = r
	}
	return &Retry{After: after, Count: true, Reason: "internal_call", Detail: what + ": " + reason}
}
