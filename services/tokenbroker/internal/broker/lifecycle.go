package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
	"github.com/biobridge/bridge/services/tokenbroker/internal/vendors"
)

// Revocation is the outcome of one connection's revocation during an
// erasure.
type Revocation struct {
	Vendor          string
	VendorUserID    string
	RevokedAtVendor bool
}

// DeleteUserData erases userID's connections: every connection that is not
// revoked yet is revoked as RevokeConnection does (the vendor is asked to
// revoke the grant; when it cannot be reached the tokens go anyway), then
// the user's rows are deleted in one transaction and the cached tokens and
// refresh locks are removed from Redis. Each step can run again: a call
// after a crash half-way revokes what is left and deletes what is left,
// and a call for a user without connections succeeds and does nothing.
func (b *Broker) DeleteUserData(ctx context.Context, userID string) ([]Revocation, error) {
	if userID == "" {
		return nil, apperr.E(apperr.Invalid, "missing_user_id", "user_id is required")
	}
	conns, err := b.store.List(ctx, userID)
	if err != nil {
		return nil, err
	}
	atVendor := map[string]bool{}
	for _, c := range conns {
		if c.Status == store.StatusRevoked {
			continue
		}
		ok, err := b.RevokeConnection(ctx, userID, c.Vendor)
		if err != nil {
			return nil, fmt.Errorf("revoke %s connection: %w", c.Vendor, err)
		}
		atVendor[c.Vendor] = ok
	}
	deleted, err := b.store.DeleteUser(ctx, userID)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, v := range []string{vendors.Whoop, vendors.Oura} {
		if err := b.cache.Forget(ctx, userID, v); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		// The rows are gone; the keys hold no usable token (revocation
		// left a tombstone) and expire on their own, but the erasure is
		// not complete until they are gone: the caller retries.
		return nil, fmt.Errorf("delete cached tokens: %w", err)
	}
	out := make([]Revocation, 0, len(deleted))
	for _, d := range deleted {
		out = append(out, Revocation{Vendor: d.Vendor, VendorUserID: d.VendorUserID, RevokedAtVendor: atVendor[d.Vendor]})
	}
	b.log.InfoContext(ctx, "user's connections erased", logging.UserID(userID), "connections", len(out))
	return out, nil
}

// RecordConnectionEvent appends a backfill_completed event (the only type
// decided outside the broker) to the connection-event outbox and returns
// its per-user sequence. A repeat of the same event id returns the first
// sequence; an event for a connection that no longer exists is NotFound.
func (b *Broker) RecordConnectionEvent(ctx context.Context, e store.Event) (int64, error) {
	switch {
	case e.UserID == "":
		return 0, apperr.E(apperr.Invalid, "missing_user_id", "user_id is required")
	case e.Type != store.EventBackfillCompleted:
		return 0, apperr.E(apperr.Invalid, "unsupported_event_type", "only backfill_completed events can be recorded")
	}
	if _, err := uuid.Parse(e.EventID); err != nil {
		return 0, apperr.E(apperr.Invalid, "invalid_event_id", "event_id must be a UUID")
	}
	if _, err := b.Vendor(e.Vendor); err != nil && apperr.CodeOf(err) == apperr.Invalid {
		return 0, err
	}
	if e.OccurredAt.IsZero() {
		e.OccurredAt = time.Now()
	}
	seq, err := b.store.RecordEvent(ctx, e)
	if errors.Is(err, store.ErrNotFound) {
		return 0, apperr.E(apperr.NotFound, ReasonConnectionNotFound, "no such connection")
	}
	if err != nil {
		return 0, err
	}
	b.kick()
	return seq, nil
}

// ReasonUserErased refuses a new authorization for an erased user.
const ReasonUserErased = "user_erased"

// RefuseErased returns FailedPrecondition when userID was erased: an erased
// user id does not get connections (and so data) again.
func (b *Broker) RefuseErased(ctx context.Context, userID string) error {
	erased, err := b.store.IsErased(ctx, userID)
	if err != nil {
		return err
	}
	if erased {
		return apperr.E(apperr.FailedPrecondition, ReasonUserErased, "this user's data was erased; it cannot connect vendors again")
	}
	return nil
}
