package audit

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/persistence/internal/metrics"
	"github.com/biobridge/bridge/services/persistence/internal/store"
)

// failingSink fails every insert until healed, like PostgreSQL during an outage.
type failingSink struct{ healed, written atomic.Int64 }

func (s *failingSink) InsertAudit(_ context.Context, entries []store.AuditEntry) error {
	if s.healed.Load() == 0 {
		return errors.New("connection refused")
	}
	s.written.Add(int64(len(entries)))
	return nil
}

// TestReadsFailClosedAndNothingRecordedIsLost: while the audit log is
// unreachable the writer keeps every entry it accepted (retrying past its
// retry count), refuses new ones once its buffer is full so the read is not
// served, and writes everything once the store is back.
func TestReadsFailClosedAndNothingRecordedIsLost(t *testing.T) {
	t.Parallel()
	sink := &failingSink{}
	w := New(sink, Config{Buffer: 2, Batch: 1, FlushInterval: time.Millisecond, Retries: 1}, metrics.Nop(), slog.New(slog.DiscardHandler))
	go w.Run()
	defer w.Close(context.Background())

	accepted := 0
	var refused error
	for i := 0; i < 50 && refused == nil; i++ {
		if err := w.Record(store.AuditEntry{Method: "GetLatest", UserID: "u"}); err != nil {
			refused = err
			break
		}
		accepted++
		time.Sleep(5 * time.Millisecond) // let the writer pick entries up and fail on them
	}
	if !errors.Is(refused, ErrFull) {
		t.Fatalf("the writer never refused an entry during the outage (accepted %d): %v", accepted, refused)
	}
	sink.healed.Store(1)
	require.Eventually(t, func() bool { return sink.written.Load() == int64(accepted) }, 10*time.Second, 10*time.Millisecond,
		"every accepted entry is written once the store is back")
}

// countingSink counts the entries and batches written.
type countingSink struct{ entries, batches atomic.Int64 }

func (s *countingSink) InsertAudit(_ context.Context, entries []store.AuditEntry) error {
	s.entries.Add(int64(len(entries)))
	s.batches.Add(1)
	return nil
}

// TestFullBatchIsWrittenBeforeTheInterval: a batch's worth of queued
// entries is written at once, not at the next interval (an hour here);
// Flush and Close write what is queued.
func TestFullBatchIsWrittenBeforeTheInterval(t *testing.T) {
	t.Parallel()
	sink := &countingSink{}
	w := New(sink, Config{Buffer: 100, Batch: 3, FlushInterval: time.Hour}, metrics.Nop(), slog.New(slog.DiscardHandler))
	go w.Run()

	for range 3 {
		require.NoError(t, w.Record(store.AuditEntry{Method: "GetLatest", UserID: "u"}))
	}
	require.Eventually(t, func() bool { return sink.entries.Load() == 3 }, 10*time.Second, time.Millisecond)
	require.NoError(t, w.Record(store.AuditEntry{Method: "GetLatest", UserID: "u"}))
	w.Flush(context.Background())
	require.Equal(t, int64(4), sink.entries.Load(), "Flush writes the partial batch")
	for range 7 {
		require.NoError(t, w.Record(store.AuditEntry{Method: "GetLatest", UserID: "u"}))
	}
	w.Close(context.Background())
	require.Equal(t, int64(11), sink.entries.Load(), "Close writes everything queued")
	require.ErrorIs(t, w.Record(store.AuditEntry{Method: "GetLatest", UserID: "u"}), ErrClosed)
}
