package store

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Notifier wakes long-polling outbox leasers when a transaction commits new
// outbox entries. One LISTEN connection per process fans out to every
// waiter: PostgreSQL delivers a NOTIFY only at commit, so a waiter that
// re-checks after a wake-up always sees the new rows.
type Notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

// NewNotifier returns a notifier; Run must be running for wake-ups.
func NewNotifier() *Notifier {
	return &Notifier{ch: make(chan struct{})}
}

// Wait returns a channel closed at the next notification. Take it before
// checking for work, so a commit between the check and the wait is not
// missed.
func (n *Notifier) Wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

func (n *Notifier) broadcast() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.ch)
	n.ch = make(chan struct{})
}

// Run listens until ctx ends, reconnecting with backoff. Waiters are woken
// after every (re)connect too, because notifications sent while the
// connection was down are lost; their poll timers cover the gap.
func (n *Notifier) Run(ctx context.Context, s *Store) {
	const minBackoff = 100 * time.Millisecond
	backoff := minBackoff
	for ctx.Err() == nil {
		started := time.Now()
		err := n.listen(ctx, s)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			backoff = minBackoff // it was up for a while: a fresh failure
		}
		s.logger.WarnContext(ctx, "outbox listen connection lost, reconnecting", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (n *Notifier) listen(ctx context.Context, s *Store) error {
	// A dedicated connection, not one from the pool: it is held forever.
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		return err
	}
	n.broadcast()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		n.broadcast()
	}
}
