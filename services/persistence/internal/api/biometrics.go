package api

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/catalog"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/truncate"
	"github.com/biobridge/bridge/services/persistence/internal/latestcache"
	"github.com/biobridge/bridge/services/persistence/internal/metrics"
	"github.com/biobridge/bridge/services/persistence/internal/record"
	"github.com/biobridge/bridge/services/persistence/internal/store"
)

// Page sizes of QueryReadings.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// Auditor records audited reads without blocking.
type Auditor interface {
	// Record queues an entry; an error means it could not be queued and the
	// read must not be served (every read of a user's data is audited).
	Record(e store.AuditEntry) error
}

// Biometrics implements BiometricsService.
type Biometrics struct {
	biometricsv1.UnimplementedBiometricsServiceServer

	store    *store.Store
	latest   *latestcache.Latest
	audit    Auditor
	m        *metrics.Metrics
	logger   *slog.Logger
	stopping <-chan struct{}
	// resync is how often an open watch re-reads the latest values, which
	// bounds the staleness left by a lost pub/sub message.
	resync time.Duration
	now    func() time.Time
	// watchSlots bounds the open watches (one token per stream).
	watchSlots chan struct{}
}

// NewBiometrics returns the BiometricsService implementation.
func NewBiometrics(st *store.Store, latest *latestcache.Latest, audit Auditor, m *metrics.Metrics, logger *slog.Logger,
	stopping <-chan struct{}, resync time.Duration, maxWatches int) *Biometrics {
	if resync <= 0 {
		resync = 30 * time.Second
	}
	if maxWatches <= 0 {
		maxWatches = 1000
	}
	return &Biometrics{store: st, latest: latest, audit: audit, m: m, logger: logger, stopping: stopping, resync: resync, now: time.Now,
		watchSlots: make(chan struct{}, maxWatches)}
}

// record audits a read before it is served. When the audit log cannot take
// the entry (PostgreSQL unreachable long enough to fill the buffer), the read
// fails closed with UNAVAILABLE: no unaudited read of health data.
func (b *Biometrics) record(ctx context.Context, method, user string, metrics []string) error {
	err := b.audit.Record(store.AuditEntry{
		At:      b.now(),
		Caller:  auth.Caller(ctx),
		UserID:  user,
		Method:  method,
		Metrics: slices.Clone(metrics),
	})
	if err != nil {
		return apperr.Wrap(err, apperr.Unavailable, "audit_unavailable", "the audit log cannot record this read right now; retry later").
			WithRetryAfter(2 * time.Second)
	}
	return nil
}

func validUser(user string) error {
	if msg := record.ValidateUserID(user); msg != "" {
		return apperr.E(apperr.Invalid, "invalid_user_id", msg)
	}
	return nil
}

// metricFilter validates requested metric names; an empty list means all.
func metricFilter(names []string) (map[string]bool, error) {
	if len(names) == 0 {
		return nil, nil
	}
	f := make(map[string]bool, len(names))
	for _, n := range names {
		if _, ok := catalog.Lookup(n); !ok {
			return nil, apperr.E(apperr.Invalid, catalog.ReasonUnknownMetric, fmt.Sprintf("metric %q is not in the catalog", truncate.UTF8(n, 64)))
		}
		f[n] = true
	}
	return f, nil
}

func (b *Biometrics) toLatestValue(l record.Latest, now time.Time) *biometricsv1.LatestValue {
	v := &biometricsv1.LatestValue{
		Metric:         l.Metric,
		Value:          l.Value,
		ObservedAt:     timestamppb.New(l.ObservedAt),
		Source:         l.Source,
		Device:         toDevice(l.Device),
		Age:            durationpb.New(max(now.Sub(l.ObservedAt), 0)),
		VendorRecordId: l.VendorRecordID,
	}
	if m, ok := catalog.Lookup(l.Metric); ok {
		v.Unit = m.Unit
	}
	return v
}

func toDevice(d record.Device) *biometricsv1.Device {
	if d == (record.Device{}) {
		return nil
	}
	return &biometricsv1.Device{Name: d.Name, Model: d.Model, BundleId: d.BundleID}
}

// GetLatest returns the newest value of each requested metric.
func (b *Biometrics) GetLatest(ctx context.Context, req *biometricsv1.GetLatestRequest) (*biometricsv1.GetLatestResponse, error) {
	if err := validUser(req.GetUserId()); err != nil {
		return nil, err
	}
	filter, err := metricFilter(req.GetMetrics())
	if err != nil {
		return nil, err
	}
	if err := b.record(ctx, "GetLatest", req.GetUserId(), req.GetMetrics()); err != nil {
		return nil, err
	}
	vals, _, err := b.latest.Get(ctx, req.GetUserId())
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "could not read latest values, retry")
	}
	now := b.now()
	resp := &biometricsv1.GetLatestResponse{}
	for _, l := range vals {
		if filter == nil || filter[l.Metric] {
			resp.Values = append(resp.Values, b.toLatestValue(l, now))
		}
	}
	slices.SortFunc(resp.Values, func(x, y *biometricsv1.LatestValue) int { return strings.Compare(x.GetMetric(), y.GetMetric()) })
	return resp, nil
}

// pageToken is the opaque QueryReadings cursor: the position after the
// last reading returned, the end bound fixed by the first page (so "until
// now" does not move while paging) and a hash of the filters it belongs to.
type pageToken struct {
	Filter string `json:"f"`
	End    int64  `json:"e"`
	T      int64  `json:"t"`
	S      int32  `json:"s"`
	R      string `json:"r"`
	Q      int32  `json:"q"`
}

func filterHash(user, metric string, start time.Time, end *timestamppb.Timestamp) string {
	h := sha256.New()
	endStr := "unset"
	if end != nil {
		endStr = strconv.FormatInt(end.AsTime().UnixMicro(), 10)
	}
	fmt.Fprintf(h, "%s\x00%s\x00%d\x00%s", user, metric, start.UnixMicro(), endStr)
	return hex.EncodeToString(h.Sum(nil)[:12])
}

func invalidToken() error {
	return apperr.E(apperr.Invalid, "invalid_page_token", "page_token is invalid or belongs to other filters")
}

// QueryReadings pages through a user's readings of one metric.
func (b *Biometrics) QueryReadings(ctx context.Context, req *biometricsv1.QueryReadingsRequest) (*biometricsv1.QueryReadingsResponse, error) {
	if err := validUser(req.GetUserId()); err != nil {
		return nil, err
	}
	m, ok := catalog.Lookup(req.GetMetric())
	if !ok {
		return nil, apperr.E(apperr.Invalid, catalog.ReasonUnknownMetric, fmt.Sprintf("metric %q is not in the catalog", truncate.UTF8(req.GetMetric(), 64)))
	}
	var start time.Time
	if req.GetStart() != nil {
		if req.GetStart().CheckValid() != nil {
			return nil, apperr.E(apperr.Invalid, "invalid_time", "start is not a valid timestamp")
		}
		start = record.Micros(req.GetStart().AsTime())
	} else {
		start = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if req.GetEnd() != nil && req.GetEnd().CheckValid() != nil {
		return nil, apperr.E(apperr.Invalid, "invalid_time", "end is not a valid timestamp")
	}
	size := int(req.GetPageSize())
	if size <= 0 {
		size = DefaultPageSize
	}
	size = min(size, MaxPageSize)
	fh := filterHash(req.GetUserId(), m.Name, start, req.GetEnd())

	q := store.Query{UserID: req.GetUserId(), Metric: m.Name, Start: start, Limit: size + 1}
	var end time.Time
	if tok := req.GetPageToken(); tok != "" {
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil {
			return nil, invalidToken()
		}
		var pt pageToken
		if json.Unmarshal(raw, &pt) != nil || pt.Filter != fh {
			return nil, invalidToken()
		}
		end = time.UnixMicro(pt.End).UTC()
		q.After = &store.ReadingKey{ObservedAt: time.UnixMicro(pt.T).UTC(), Source: biometricsv1.Source(pt.S), VendorRecordID: pt.R, Seq: pt.Q}
	} else if req.GetEnd() != nil {
		end = record.Micros(req.GetEnd().AsTime())
	} else {
		end = record.Micros(b.now())
	}
	q.End = end
	if err := b.record(ctx, "QueryReadings", req.GetUserId(), []string{m.Name}); err != nil {
		return nil, err
	}

	rows, err := b.store.QueryReadings(ctx, q)
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "could not read readings, retry")
	}
	resp := &biometricsv1.QueryReadingsResponse{}
	more := len(rows) > size
	if more {
		rows = rows[:size]
	}
	for _, r := range rows {
		sr := &biometricsv1.StoredReading{
			Metric:         r.Metric,
			Value:          r.Value,
			Unit:           m.Unit,
			ObservedAt:     timestamppb.New(r.ObservedAt),
			Source:         r.Source,
			Device:         toDevice(r.Device),
			VendorRecordId: r.VendorRecordID,
		}
		if !r.StartTime.IsZero() {
			sr.StartTime = timestamppb.New(r.StartTime)
		}
		resp.Readings = append(resp.Readings, sr)
	}
	if more {
		last := rows[len(rows)-1]
		raw, err := json.Marshal(pageToken{Filter: fh, End: end.UnixMicro(), T: last.ObservedAt.UnixMicro(),
			S: int32(last.Source), R: last.VendorRecordID, Q: last.Seq})
		if err != nil {
			return nil, fmt.Errorf("encode page token: %w", err)
		}
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString(raw)
	}
	return resp, nil
}

// ListMetrics describes the catalog.
func (b *Biometrics) ListMetrics(context.Context, *biometricsv1.ListMetricsRequest) (*biometricsv1.ListMetricsResponse, error) {
	resp := &biometricsv1.ListMetricsResponse{}
	for _, m := range catalog.All() {
		kind := biometricsv1.MetricKind_METRIC_KIND_QUANTITY
		if m.Kind == catalog.Category {
			kind = biometricsv1.MetricKind_METRIC_KIND_CATEGORY
		}
		resp.Metrics = append(resp.Metrics, &biometricsv1.Metric{
			Name: m.Name, Unit: m.Unit, Min: m.Min, Max: m.Max, Description: m.Description, Kind: kind,
		})
	}
	return resp, nil
}

// WatchLatest streams a snapshot of the requested latest values, then
// every change. Changes come from the user's pub/sub channel; each message
// carries the user's commit counter, so the stream applies them in commit
// order and re-reads the values when it sees a gap (a lost or reordered
// message). A periodic re-read covers a lost last message. The client
// sees each metric's newest value at least once; a value may repeat.
func (b *Biometrics) WatchLatest(req *biometricsv1.WatchLatestRequest, stream grpc.ServerStreamingServer[biometricsv1.WatchLatestResponse]) error {
	ctx := stream.Context()
	if err := validUser(req.GetUserId()); err != nil {
		return err
	}
	filter, err := metricFilter(req.GetMetrics())
	if err != nil {
		return err
	}
	cache := b.latest.Cache()
	if cache == nil {
		return apperr.E(apperr.FailedPrecondition, "watch_unavailable", "WatchLatest needs the Redis cache, which is not configured")
	}
	// Each watch holds its own Redis subscription connection: bounded, so a
	// fleet of agents cannot exhaust Redis's client limit.
	select {
	case b.watchSlots <- struct{}{}:
		defer func() { <-b.watchSlots }()
	default:
		return apperr.E(apperr.ResourceExhausted, "too_many_watches", "this replica serves its maximum of open watches; retry later").
			WithRetryAfter(5 * time.Second)
	}
	user := req.GetUserId()
	if err := b.record(ctx, "WatchLatest", user, req.GetMetrics()); err != nil {
		return err
	}
	b.m.WatchStreams.Inc()
	defer b.m.WatchStreams.Dec()

	// Subscribe before reading the snapshot: a change committed in between
	// then arrives as a message instead of being lost.
	ps, err := cache.Subscribe(ctx, user)
	if err != nil {
		return apperr.Wrap(err, apperr.Unavailable, "watch_unavailable", "could not open the change feed, retry")
	}
	defer func() { _ = ps.Close() }()
	msgs := ps.Channel()

	sent := map[string]record.Latest{}
	send := func(change biometricsv1.ChangeType, metric string, l *record.Latest) error {
		resp := &biometricsv1.WatchLatestResponse{Change: change}
		if l != nil {
			resp.Value = b.toLatestValue(*l, b.now())
			sent[metric] = *l
		} else {
			resp.Value = &biometricsv1.LatestValue{Metric: metric}
			delete(sent, metric)
		}
		return stream.Send(resp)
	}
	// sync re-reads the values and sends what differs from what was sent.
	sync := func(kind biometricsv1.ChangeType) (int64, error) {
		vals, seq, err := b.latest.Get(ctx, user)
		if err != nil {
			return 0, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "could not read latest values, retry")
		}
		names := make([]string, 0, len(vals))
		for m := range vals {
			if filter == nil || filter[m] {
				names = append(names, m)
			}
		}
		slices.Sort(names)
		for _, m := range names {
			l := vals[m]
			if prev, ok := sent[m]; ok && prev == l {
				continue
			}
			if err := send(kind, m, &l); err != nil {
				return 0, err
			}
		}
		for m := range sent {
			if _, ok := vals[m]; !ok {
				if err := send(biometricsv1.ChangeType_CHANGE_TYPE_REMOVED, m, nil); err != nil {
					return 0, err
				}
			}
		}
		return seq, nil
	}
	lastSeq, err := sync(biometricsv1.ChangeType_CHANGE_TYPE_SNAPSHOT)
	if err != nil {
		return err
	}
	ticker := time.NewTicker(b.resync)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-b.stopping:
			return apperr.E(apperr.Unavailable, "shutting_down", "server is shutting down, reconnect")
		case <-ticker.C:
			if lastSeq, err = sync(biometricsv1.ChangeType_CHANGE_TYPE_UPDATED); err != nil {
				return err
			}
		case msg, ok := <-msgs:
			if !ok {
				return apperr.E(apperr.Unavailable, "watch_unavailable", "change feed closed, reconnect")
			}
			seq, changes, err := latestcache.Decode(msg.Payload)
			if err != nil {
				b.logger.WarnContext(ctx, "bad latest change message", logging.UserID(user), "err", err)
				continue
			}
			switch {
			case seq <= lastSeq:
				continue // already part of what was sent
			case seq > lastSeq+1:
				// A commit's message is missing or late: re-read.
				s, err := sync(biometricsv1.ChangeType_CHANGE_TYPE_UPDATED)
				if err != nil {
					return err
				}
				lastSeq = max(s, seq)
				if s < seq {
					// The read is older than this message (cache lagging):
					// apply the message's values too; they are newer.
					if err := b.applyChanges(changes, filter, sent, send); err != nil {
						return err
					}
				}
				continue
			}
			lastSeq = seq
			if err := b.applyChanges(changes, filter, sent, send); err != nil {
				return err
			}
		}
	}
}

func (b *Biometrics) applyChanges(changes []latestcache.Change, filter map[string]bool, sent map[string]record.Latest,
	send func(biometricsv1.ChangeType, string, *record.Latest) error) error {
	for _, c := range changes {
		if filter != nil && !filter[c.Metric] {
			continue
		}
		if c.Value == nil {
			if _, ok := sent[c.Metric]; ok {
				if err := send(biometricsv1.ChangeType_CHANGE_TYPE_REMOVED, c.Metric, nil); err != nil {
					return err
				}
			}
			continue
		}
		if prev, ok := sent[c.Metric]; ok && prev == *c.Value {
			continue
		}
		if err := send(biometricsv1.ChangeType_CHANGE_TYPE_UPDATED, c.Metric, c.Value); err != nil {
			return err
		}
	}
	return nil
}
