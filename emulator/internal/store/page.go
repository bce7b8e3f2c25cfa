package store

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// PageItem is one element of a collection being paged: its sort key, its
// tie-breaking id and the value served.
type PageItem struct {
	Key time.Time
	ID  string
	V   any
}

// Paginate sorts items by (key, id), ascending or descending, and returns the
// page after the cursor in token. Cursors name the last item served rather
// than an offset, so records added between two page requests neither repeat
// nor hide items.
func Paginate(items []PageItem, desc bool, token string, limit int) ([]PageItem, string, error) {
	less := func(a, b PageItem) bool {
		if !a.Key.Equal(b.Key) {
			return a.Key.Before(b.Key)
		}
		return a.ID < b.ID
	}
	sort.Slice(items, func(i, j int) bool {
		if desc {
			return less(items[j], items[i])
		}
		return less(items[i], items[j])
	})
	from := 0
	if token != "" {
		raw, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil {
			return nil, "", fmt.Errorf("decode page token: %w", err)
		}
		ns, id, ok := strings.Cut(string(raw), "|")
		n, err := strconv.ParseInt(ns, 10, 64)
		if !ok || err != nil {
			return nil, "", fmt.Errorf("%w: malformed page token", ErrInvalid)
		}
		cur := PageItem{Key: time.Unix(0, n), ID: id}
		from = len(items)
		for i, it := range items {
			if (!desc && less(cur, it)) || (desc && less(it, cur)) {
				from = i
				break
			}
		}
	}
	to := min(from+limit, len(items))
	page := items[from:to]
	next := ""
	if to < len(items) && len(page) > 0 {
		last := page[len(page)-1]
		next = base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(last.Key.UnixNano(), 10) + "|" + last.ID))
	}
	return page, next, nil
}

// OffsetString formats a UTC offset the way WHOOP does ("+01:00").
func OffsetString(d time.Duration) string {
	return time.Date(2000, 1, 1, 0, 0, 0, 0, time.FixedZone("", int(d.Seconds()))).Format("-07:00")
}

// CheckHTTPURL reports whether s is an absolute http(s) URL.
func CheckHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("parse url: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http(s) url", s)
	}
	return nil
}
