// Package outbox is the publisher's client of the persistence service's
// transactional outbox (LeaseOutbox, AckOutbox, NackOutbox, GetOutboxStats).
// It adds the service token to every call and keeps the generated types at
// the edge.
package outbox

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
)

// Client calls the outbox RPCs.
type Client struct {
	rpc persistencev1.PersistenceServiceClient
}

// New returns a client over conn, which carries the service token
// (grpcclient.Config.ServiceToken).
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{rpc: persistencev1.NewPersistenceServiceClient(conn)}
}

// Lease is one leased batch.
type Lease struct {
	Token   string
	Entries []*persistencev1.OutboxEntry
	// Expires is when the lease runs out at the earliest, on this
	// process's monotonic clock: the time left that the database measured
	// after leasing, counted from when the request was sent (which was
	// before the database measured). Neither side's wall clock matters.
	Expires time.Time
}

// LeaseRequest parameterizes Lease.
type LeaseRequest struct {
	Holder     string
	MaxEntries int
	Duration   time.Duration
	Wait       time.Duration
}

// rpcSlack is added to a long-poll's wait for the call deadline.
const rpcSlack = 10 * time.Second

// Lease leases up to MaxEntries entries, waiting up to Wait for some to
// appear. An empty lease is not an error.
func (c *Client) Lease(ctx context.Context, req LeaseRequest) (Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, req.Wait+rpcSlack)
	defer cancel()
	sent := time.Now()
	resp, err := c.rpc.LeaseOutbox(ctx, &persistencev1.LeaseOutboxRequest{
		Holder:        req.Holder,
		MaxEntries:    int32(req.MaxEntries),
		LeaseDuration: durationpb.New(req.Duration),
		WaitTimeout:   durationpb.New(req.Wait),
		// The stored payloads, forwarded as they are (kafka.BuildMessage
		// takes either form: a persistence service from before raw_payload
		// sends them decoded).
		RawPayload: true,
	})
	if err != nil {
		return Lease{}, fmt.Errorf("lease outbox: %w", err)
	}
	// After a long-poll wait this estimate is short by the wait; the relay
	// renews the lease before its first send when it needs more.
	expires := sent.Add(resp.GetLeaseRemaining().AsDuration())
	if resp.GetLeaseRemaining() == nil && len(resp.GetEntries()) > 0 {
		// A persistence service from before lease_remaining (during a
		// rolling upgrade): the lease started inside the call, at most a
		// generous second before the answer.
		start := time.Now().Add(-legacyAnswerBound)
		if start.Before(sent) {
			start = sent
		}
		expires = start.Add(req.Duration)
	}
	return Lease{Token: resp.GetLeaseToken(), Entries: resp.GetEntries(), Expires: expires}, nil
}

// legacyAnswerBound is how long a persistence service that does not report
// lease_remaining may take from leasing to answering.
const legacyAnswerBound = time.Second

// Renew extends the lease held under token to d from now (database
// clock). It returns the new expiry on this process's clock, or ok false
// when the lease expired or was taken over: the holder must not publish
// its entries any more.
func (c *Client) Renew(ctx context.Context, token string, d time.Duration) (expires time.Time, ok bool, err error) {
	sent := time.Now()
	resp, err := c.rpc.RenewOutboxLease(ctx, &persistencev1.RenewOutboxLeaseRequest{
		LeaseToken:    token,
		LeaseDuration: durationpb.New(d),
	})
	if err != nil {
		return time.Time{}, false, fmt.Errorf("renew outbox lease: %w", err)
	}
	if resp.GetRenewed() == 0 {
		return time.Time{}, false, nil
	}
	return sent.Add(resp.GetLeaseRemaining().AsDuration()), true, nil
}

// Ack marks ids published and returns how many were still leased.
func (c *Client) Ack(ctx context.Context, token string, ids []int64) (int, error) {
	resp, err := c.rpc.AckOutbox(ctx, &persistencev1.AckOutboxRequest{LeaseToken: token, Ids: ids})
	if err != nil {
		return 0, fmt.Errorf("ack outbox: %w", err)
	}
	return int(resp.GetAcked()), nil
}

// Nack returns ids to the pool, not to be leased again before retryAfter.
// attempted says the first of ids per key was sent and failed (it counts
// as a publish attempt); false gives back entries that were never sent.
func (c *Client) Nack(ctx context.Context, token string, ids []int64, reason string, retryAfter time.Duration, attempted bool) (int, error) {
	resp, err := c.rpc.NackOutbox(ctx, &persistencev1.NackOutboxRequest{
		LeaseToken: token,
		Ids:        ids,
		Error:      reason,
		RetryAfter: durationpb.New(retryAfter),
		Attempted:  attempted,
	})
	if err != nil {
		return 0, fmt.Errorf("nack outbox: %w", err)
	}
	return int(resp.GetReleased()), nil
}

// Stats is the outbox backlog.
type Stats struct {
	Pending int64
	Leased  int64
	// OldestPendingAt is zero when nothing is pending.
	OldestPendingAt time.Time
}

// Stats reports the backlog.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	resp, err := c.rpc.GetOutboxStats(ctx, &persistencev1.GetOutboxStatsRequest{})
	if err != nil {
		return Stats{}, fmt.Errorf("outbox stats: %w", err)
	}
	s := Stats{Pending: resp.GetPending(), Leased: resp.GetLeased()}
	if resp.GetOldestPendingAt() != nil {
		s.OldestPendingAt = resp.GetOldestPendingAt().AsTime()
	}
	return s, nil
}
