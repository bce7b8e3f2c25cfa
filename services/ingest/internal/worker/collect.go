package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/ingest/internal/readings"
	"github.com/biobridge/bridge/services/ingest/internal/store"
	"github.com/biobridge/bridge/services/ingest/oura"
	"github.com/biobridge/bridge/services/ingest/vendorhttp"
	"github.com/biobridge/bridge/services/ingest/whoop"
)

// Kinds of collection jobs: one page of a vendor collection each, read in
// the background (below live work in priority and within a share of the
// rate budget).
const (
	// KindBackfill reads the history of a new connection.
	KindBackfill = "backfill"
	// KindReconcile re-reads a recent window of an active connection, so
	// records whose webhooks were lost arrive anyway.
	KindReconcile = "reconcile"
)

// Streams: the collections one connection's backfill or reconciliation
// reads. A WHOOP recovery is read through the sleeps of a sleep page (see
// Collector); WHOOP cycles carry nothing the catalog stores. Oura streams
// are its data types.
const (
	StreamWhoopSleep    = "sleep"
	StreamWhoopRecovery = "recovery"
	StreamWhoopWorkout  = "workout"
)

// Streams returns the streams a connection of vendor starts with.
func Streams(vendor string) []string {
	switch vendor {
	case VendorWhoop:
		return []string{StreamWhoopSleep, StreamWhoopWorkout}
	case VendorOura:
		return append(append([]string(nil), oura.DataTypes...), oura.HeartRate)
	}
	return nil
}

// SleepRef is what a recovery needs of its sleep: its identity and end.
type SleepRef struct {
	ID    string    `json:"id"`
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// Page is the payload of a collection job: one page of one stream of one
// connection.
type Page struct {
	UserID string `json:"user_id"`
	Stream string `json:"stream"`
	// Key identifies the stream instance; the page's dedupe key is Key and
	// the page number, so a page rerun after a crash enqueues nothing new.
	Key string `json:"key"`
	// Start and End bound the records; a reconciliation job leaves them
	// zero and its first page sets them from Window when it runs (its run
	// time is spread over the reconciliation interval).
	Start  time.Time     `json:"start,omitzero"`
	End    time.Time     `json:"end,omitzero"`
	Window time.Duration `json:"window,omitempty"`
	Next   string        `json:"next,omitempty"`
	Number int           `json:"page"`
	// Sleeps are the sleeps whose recoveries a WHOOP recovery page stores.
	Sleeps []SleepRef `json:"sleeps,omitempty"`
}

// PageJob returns the job reading page p of kind for vendor.
func PageJob(kind, vendor, group string, p Page, delay time.Duration) (store.NewJob, error) {
	payload, err := json.Marshal(p)
	if err != nil {
		return store.NewJob{}, fmt.Errorf("encode page job: %w", err)
	}
	prio := store.PriorityBackground
	if kind == KindReconcile {
		prio = store.PriorityReconcile
	}
	return store.NewJob{
		Vendor: vendor, Kind: kind, DedupeKey: p.Key + ":" + strconv.Itoa(p.Number), Payload: payload,
		Priority: prio, Delay: delay, GroupKey: group,
	}, nil
}

// Outcomes of a collection page.
const (
	OutcomePageStored    = "page_stored"
	OutcomePageUnchanged = "page_unchanged"
)

// Collector handles backfill and reconciliation jobs: it reads one page of
// a vendor collection with the user's token, writes the page's records
// through persistence in one call (idempotent: records already stored are
// duplicates, not new versions), and enqueues what follows (the next page,
// and for a WHOOP sleep page the recoveries of its sleeps) before its own
// job is marked done, so an unfinished stream always has an unfinished job.
type Collector struct {
	f      *Fetcher
	store  *store.Store
	logger *slog.Logger
	wake   func()
}

// NewCollector builds the collection handler on the webhook fetcher's
// clients. wake (optional) tells the local workers a job was enqueued.
func NewCollector(f *Fetcher, store *store.Store, wake func(), logger *slog.Logger) *Collector {
	if wake == nil {
		wake = func() {}
	}
	return &Collector{f: f, store: store, logger: logger, wake: wake}
}

// Handle implements Handler for KindBackfill and KindReconcile.
func (c *Collector) Handle(ctx context.Context, j store.Job) (string, error) {
	var p Page
	if err := json.Unmarshal(j.Payload, &p); err != nil {
		return "", &Permanent{Reason: "unreadable payload", Err: err}
	}
	if p.UserID == "" || p.Key == "" {
		return "", &Permanent{Reason: "page without user or key"}
	}
	if p.Start.IsZero() {
		if p.Window <= 0 {
			return "", &Permanent{Reason: "page without window"}
		}
		p.End = time.Now().UTC()
		p.Start = p.End.Add(-p.Window)
	}
	var fetch func(context.Context, string, Page) (pageResult, error)
	switch {
	case j.Vendor == VendorWhoop && p.Stream == StreamWhoopSleep:
		fetch = c.whoopSleeps
	case j.Vendor == VendorWhoop && p.Stream == StreamWhoopRecovery:
		fetch = c.whoopRecoveries
	case j.Vendor == VendorWhoop && p.Stream == StreamWhoopWorkout:
		fetch = c.whoopWorkouts
	case j.Vendor == VendorOura && p.Stream == oura.HeartRate:
		fetch = c.ouraHeartRate
	case j.Vendor == VendorOura && oura.Supported(p.Stream):
		fetch = c.ouraDocuments
	default:
		return "", &Permanent{Reason: "unknown stream " + j.Vendor + "/" + p.Stream}
	}
	ctx = vendorhttp.Background(ctx)
	var res pageResult
	_, err := c.f.withToken(ctx, p.UserID, j.Vendor, func(token string) (string, error) {
		var err error
		res, err = fetch(ctx, token, p)
		return "", err
	})
	if errors.Is(err, errConnectionBroken) || errors.Is(err, errConnectionGone) {
		// A revoked or broken connection ends its streams; a reconnect is
		// a new generation with a backfill of its own.
		return OutcomeInactive, nil
	}
	if err != nil {
		if vendorhttp.KindOf(err) == vendorhttp.NotFound {
			// A collection does not go away; a 404 is a wrong path, not a
			// missing record.
			return "", &Permanent{Reason: "collection not found", Err: err}
		}
		return vendorOutcome(err)
	}
	stored, fresh, err := c.f.writeBatch(ctx, j.Vendor, res.events, res.skipped)
	if err != nil {
		return "", err
	}
	if j.Kind == KindBackfill && stored > 0 {
		if err := c.store.AddBackfillRecords(ctx, j.GroupKey, stored); err != nil {
			c.logger.WarnContext(ctx, "cannot count backfill records", slog.Any("err", err))
		}
	}
	// What follows is enqueued before this job is done (see Collector).
	for _, next := range res.follow {
		nj, err := PageJob(j.Kind, j.Vendor, j.GroupKey, next, 0)
		if err != nil {
			return "", &Permanent{Reason: "cannot encode the next page", Err: err}
		}
		if _, _, err := c.store.Enqueue(ctx, nj); err != nil {
			return "", err
		}
	}
	if len(res.follow) > 0 {
		c.wake()
	}
	if fresh > 0 {
		return OutcomePageStored, nil
	}
	return OutcomePageUnchanged, nil
}

type pageResult struct {
	events  []*persistencev1.EventInput
	skipped []readings.Skipped
	follow  []Page
}

func (r *pageResult) add(ev *persistencev1.EventInput, skipped []readings.Skipped) {
	r.skipped = append(r.skipped, skipped...)
	if len(ev.GetReadings()) > 0 {
		r.events = append(r.events, ev)
	}
}

// next is p's following page when the vendor named one.
func next(p Page, token string) []Page {
	if token == "" {
		return nil
	}
	n := p
	n.Next, n.Number = token, p.Number+1
	return []Page{n}
}

// whoopSleeps stores a page of sleeps and queues the recoveries of its
// sleeps: a recovery is observed when its sleep ends, and only the sleep
// says when that is.
func (c *Collector) whoopSleeps(ctx context.Context, token string, p Page) (pageResult, error) {
	page, err := c.f.whoop.Sleeps(ctx, token, p.Start, p.End, p.Next)
	if err != nil {
		return pageResult{}, err
	}
	res := pageResult{follow: next(p, page.NextToken)}
	var refs []SleepRef
	for _, s := range page.Records {
		if s.ScoreState != whoop.Scored || s.Start.IsZero() || s.End.IsZero() {
			// Pending scores are sent again as webhooks when scored, and
			// the next reconciliation reads them too.
			continue
		}
		n, err := whoop.NormalizeSleep(p.UserID, s)
		if err != nil {
			continue
		}
		res.add(n.Event, n.Skipped)
		refs = append(refs, SleepRef{ID: s.ID, Start: s.Start, End: s.End})
	}
	if len(refs) > 0 {
		rp := Page{UserID: p.UserID, Stream: StreamWhoopRecovery, Key: p.Key + ":recovery-" + strconv.Itoa(p.Number), Sleeps: refs}
		rp.Start, rp.End = refs[0].Start, refs[0].End
		for _, r := range refs {
			rp.Start = minTime(rp.Start, r.Start)
			rp.End = maxTime(rp.End, r.End)
		}
		// Recoveries are found by their cycle, which starts with the sleep;
		// a second of slack keeps the last one inside [start, end).
		rp.End = rp.End.Add(time.Second)
		res.follow = append(res.follow, rp)
	}
	return res, nil
}

// whoopRecoveries stores the recoveries of the sleeps named in p.
func (c *Collector) whoopRecoveries(ctx context.Context, token string, p Page) (pageResult, error) {
	page, err := c.f.whoop.Recoveries(ctx, token, p.Start, p.End, p.Next)
	if err != nil {
		return pageResult{}, err
	}
	sleeps := make(map[string]SleepRef, len(p.Sleeps))
	for _, s := range p.Sleeps {
		sleeps[s.ID] = s
	}
	res := pageResult{follow: next(p, page.NextToken)}
	for _, r := range page.Records {
		s, ok := sleeps[r.SleepID]
		if !ok || r.ScoreState != whoop.Scored {
			// Another page's sleep, a nap's, or not scored yet.
			continue
		}
		n, err := whoop.NormalizeRecovery(p.UserID, whoop.Sleep{ID: s.ID, Start: s.Start, End: s.End}, r)
		if err != nil {
			continue
		}
		res.add(n.Event, n.Skipped)
	}
	return res, nil
}

func (c *Collector) whoopWorkouts(ctx context.Context, token string, p Page) (pageResult, error) {
	page, err := c.f.whoop.Workouts(ctx, token, p.Start, p.End, p.Next)
	if err != nil {
		return pageResult{}, err
	}
	res := pageResult{follow: next(p, page.NextToken)}
	for _, w := range page.Records {
		if w.ScoreState != whoop.Scored {
			continue
		}
		n, err := whoop.NormalizeWorkout(p.UserID, w)
		if err != nil {
			continue
		}
		res.add(n.Event, n.Skipped)
	}
	return res, nil
}

func (c *Collector) ouraDocuments(ctx context.Context, token string, p Page) (pageResult, error) {
	page, err := c.f.oura.Documents(ctx, token, p.Stream, p.Start, p.End, p.Next)
	if err != nil {
		return pageResult{}, err
	}
	res := pageResult{follow: next(p, page.NextToken)}
	for _, d := range page.Data {
		if d.ID == "" {
			continue
		}
		n, err := oura.Normalize(p.UserID, p.Stream, d, time.Time{})
		if err != nil {
			continue
		}
		res.add(n.Event, n.Skipped)
	}
	return res, nil
}

// ouraHeartRate stores a page of heart-rate samples. The collection takes
// at most MaxHeartRateRange per request, so a longer window is read as a
// run of slices: this page reads the first slice (following its
// next_token pages), and the slice's last page queues the rest of the
// window as the next page. Pages hold up to a thousand samples, so a
// thirty-day backfill costs about nine requests of the connection's budget.
func (c *Collector) ouraHeartRate(ctx context.Context, token string, p Page) (pageResult, error) {
	end := p.End
	if end.Sub(p.Start) > oura.MaxHeartRateRange {
		end = p.Start.Add(oura.MaxHeartRateRange)
	}
	page, err := c.f.oura.HeartRateSamples(ctx, token, p.Start, end, p.Next)
	if err != nil {
		return pageResult{}, err
	}
	res := pageResult{follow: next(p, page.NextToken)}
	if page.NextToken == "" && end.Before(p.End) {
		rest := p
		rest.Start, rest.Next, rest.Number = end, "", p.Number+1
		res.follow = []Page{rest}
	}
	events, skipped := oura.NormalizeHeartRate(p.UserID, page.Data)
	res.skipped = skipped
	res.events = events
	return res, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// writeBatch writes a page's events in one call. stored counts the events
// persistence accepted (new, changed or already stored), fresh those that
// were new or changed.
func (f *Fetcher) writeBatch(ctx context.Context, vendor string, events []*persistencev1.EventInput, skipped []readings.Skipped) (stored, fresh int, err error) {
	for _, s := range skipped {
		f.skipped.WithLabelValues(vendor, s.Metric, s.Reason).Inc()
	}
	if len(events) == 0 {
		return 0, 0, nil
	}
	resp, err := f.persistence.WriteEvents(ctx, &persistencev1.WriteEventsRequest{Events: events})
	if err != nil {
		return 0, 0, grpcFailure("write events", err)
	}
	if len(resp.GetResults()) != len(events) {
		return 0, 0, fmt.Errorf("write events: %d results for %d events", len(resp.GetResults()), len(events))
	}
	for i, r := range resp.GetResults() {
		ev := events[i]
		for _, rr := range r.GetRejectedReadings() {
			f.skipped.WithLabelValues(vendor, rr.GetMetric(), rr.GetReason()).Inc()
		}
		switch r.GetStatus() {
		case persistencev1.WriteStatus_WRITE_STATUS_INSERTED, persistencev1.WriteStatus_WRITE_STATUS_UPDATED:
			result := "inserted"
			if r.GetStatus() == persistencev1.WriteStatus_WRITE_STATUS_UPDATED {
				result = "updated"
			}
			f.writes.WithLabelValues(vendor, ev.GetKind(), result).Inc()
			f.noteArrival(ev.GetUserId(), vendor)
			stored++
			fresh++
		case persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE:
			f.writes.WithLabelValues(vendor, ev.GetKind(), "duplicate").Inc()
			stored++
		default:
			f.writes.WithLabelValues(vendor, ev.GetKind(), "rejected").Inc()
			f.logRejection(ctx, vendor, ev.GetKind(), r.GetReason())
		}
	}
	return stored, fresh, nil
}
