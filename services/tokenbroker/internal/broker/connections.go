package broker

import (
	"context"
	"errors"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
)

// ListConnections lists userID's connections, ordered by vendor.
func (b *Broker) ListConnections(ctx context.Context, userID string) ([]Connection, error) {
	rows, err := b.store.List(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := make([]Connection, len(rows))
	for i, r := range rows {
		out[i] = publicConnection(r)
	}
	return out, nil
}

// ResolveVendorUser maps a vendor account to its internal user.
func (b *Broker) ResolveVendorUser(ctx context.Context, vendor, vendorUserID string) (Connection, error) {
	if _, err := b.Vendor(vendor); err != nil && apperr.CodeOf(err) == apperr.Invalid {
		return Connection{}, err
	}
	if vendorUserID == "" {
		return Connection{}, apperr.E(apperr.Invalid, "missing_vendor_user_id", "vendor_user_id is required")
	}
	c, err := b.store.ResolveVendorUser(ctx, vendor, vendorUserID)
	if errors.Is(err, store.ErrNotFound) {
		return Connection{}, apperr.E(apperr.NotFound, ReasonConnectionNotFound, "no user is connected with this vendor account")
	}
	if err != nil {
		return Connection{}, err
	}
	return publicConnection(c), nil
}
