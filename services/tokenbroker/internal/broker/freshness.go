package broker

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
	"github.com/biobridge/bridge/services/tokenbroker/internal/vendors"
)

// Limits of the freshness calls.
const (
	DefaultActivePageSize = 500
	MaxActivePageSize     = 1000
	MaxArrivals           = 1000
	// staleBatch bounds one marking transaction.
	staleBatch = 500
)

// ListActiveConnections returns one page of active connections made at or
// after since (zero: all), ordered by user and vendor, and the token of the
// next page ("" on the last).
func (b *Broker) ListActiveConnections(ctx context.Context, since time.Time, pageToken string, size int) ([]Connection, string, error) {
	switch {
	case size == 0:
		size = DefaultActivePageSize
	case size < 0 || size > MaxActivePageSize:
		return nil, "", apperr.E(apperr.Invalid, "invalid_page_size", fmt.Sprintf("page_size must be between 1 and %d", MaxActivePageSize))
	}
	after, err := decodePageToken(pageToken)
	if err != nil {
		return nil, "", err
	}
	rows, err := b.store.ListActive(ctx, since, after, size)
	if err != nil {
		return nil, "", err
	}
	out := make([]Connection, len(rows))
	for i, r := range rows {
		out[i] = publicConnection(r)
	}
	next := ""
	if len(rows) == size {
		last := rows[len(rows)-1]
		next = base64.RawURLEncoding.EncodeToString([]byte(last.UserID + "\x00" + last.Vendor))
	}
	return out, next, nil
}

// decodePageToken reads a ListActiveConnections page token. The token is
// the last key of the previous page: opaque to callers, and it needs no
// server-side state.
func decodePageToken(tok string) (store.Key, error) {
	if tok == "" {
		return store.Key{}, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	user, vendor, ok := strings.Cut(string(raw), "\x00")
	if err != nil || !ok || user == "" || vendor == "" {
		return store.Key{}, apperr.E(apperr.Invalid, "invalid_page_token", "page_token is not one this server issued")
	}
	return store.Key{UserID: user, Vendor: vendor}, nil
}

// Arrival is new data of a connection, stored at At.
type Arrival struct {
	UserID string
	Vendor string
	At     time.Time
}

// ReportDataArrival records arrivals (see store.RecordDataArrival) and
// returns how many stale connections became fresh.
func (b *Broker) ReportDataArrival(ctx context.Context, arrivals []Arrival) (int, error) {
	if len(arrivals) > MaxArrivals {
		return 0, apperr.E(apperr.Invalid, "too_many_arrivals", fmt.Sprintf("at most %d arrivals per call", MaxArrivals))
	}
	rows := make([]store.Arrival, 0, len(arrivals))
	for i, a := range arrivals {
		if a.UserID == "" || (a.Vendor != vendors.Whoop && a.Vendor != vendors.Oura) || a.At.IsZero() {
			return 0, apperr.E(apperr.Invalid, "invalid_arrival", fmt.Sprintf("arrivals[%d] needs user_id, a known vendor and arrived_at", i))
		}
		// A clock far ahead must not make a connection look fresh for
		// days: an arrival is never later than now.
		at := a.At
		if now := time.Now(); at.After(now) {
			at = now
		}
		rows = append(rows, store.Arrival{UserID: a.UserID, Vendor: a.Vendor, At: at})
	}
	fresh, err := b.store.RecordDataArrival(ctx, rows, time.Now())
	if err != nil {
		return 0, err
	}
	if len(fresh) > 0 {
		b.kick()
		b.log.InfoContext(ctx, "stale connections are fresh again", "count", len(fresh))
	}
	return len(fresh), nil
}

// MarkStaleConnections marks every active connection silent for longer
// than staleAfter as stale (with its event) and returns how many it marked
// and the stale totals per vendor, every configured vendor included.
func (b *Broker) MarkStaleConnections(ctx context.Context, staleAfter time.Duration) (int, map[string]int64, error) {
	if staleAfter < time.Second {
		return 0, nil, apperr.E(apperr.Invalid, "invalid_stale_after", "stale_after must be at least 1s")
	}
	marked := 0
	for {
		keys, err := b.store.MarkStale(ctx, staleAfter, time.Now(), staleBatch)
		if err != nil {
			return marked, nil, err
		}
		marked += len(keys)
		if len(keys) < staleBatch {
			break
		}
	}
	if marked > 0 {
		b.kick()
		b.log.InfoContext(ctx, "connections marked stale", "count", marked)
	}
	counts, err := b.store.StaleCounts(ctx)
	if err != nil {
		return marked, nil, err
	}
	for v := range b.vendors {
		if _, ok := counts[v]; !ok {
			counts[v] = 0
		}
	}
	return marked, counts, nil
}
