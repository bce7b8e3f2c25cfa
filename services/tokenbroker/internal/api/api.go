// Package api serves biobridge.tokens.v1.TokenBrokerService on top of
// the broker and decides who may call what: internal callers with a service
// token (GetAccessToken, ResolveVendorUser, ...), users with their JWT
// (StartAuthorization, CompleteAuthorization, ListConnections,
// RevokeConnection, each only for themselves), and anyone holding a valid
// state (HandleAuthorizationCallback, the vendor's redirect of a browser
// through the gateway, which links nothing).
package api

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/services/tokenbroker/internal/broker"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
)

// Who may call a method.
type access int

const (
	accessService access = iota + 1
	accessUser
	accessState
)

var methodAccess = map[string]access{
	tokensv1.TokenBrokerService_GetAccessToken_FullMethodName:              accessService,
	tokensv1.TokenBrokerService_ResolveVendorUser_FullMethodName:           accessService,
	tokensv1.TokenBrokerService_StartAuthorization_FullMethodName:          accessUser,
	tokensv1.TokenBrokerService_ListConnections_FullMethodName:             accessUser,
	tokensv1.TokenBrokerService_RevokeConnection_FullMethodName:            accessUser,
	tokensv1.TokenBrokerService_CompleteAuthorization_FullMethodName:       accessUser,
	tokensv1.TokenBrokerService_HandleAuthorizationCallback_FullMethodName: accessState,
	tokensv1.TokenBrokerService_ListActiveConnections_FullMethodName:       accessService,
	tokensv1.TokenBrokerService_ReportDataArrival_FullMethodName:           accessService,
	tokensv1.TokenBrokerService_MarkStaleConnections_FullMethodName:        accessService,
	tokensv1.TokenBrokerService_RecordConnectionEvent_FullMethodName:       accessService,
	tokensv1.TokenBrokerService_DeleteUserData_FullMethodName:              accessService,
}

// Authenticator is the grpcserver auth hook.
type Authenticator struct {
	Services *auth.ServiceTokens
	// ACL says which service-token methods each caller may call; a token
	// alone must not let any internal caller fetch every user's vendor
	// access token. Nil allows every caller every service-token method.
	ACL   *auth.ACL
	Users *auth.UserVerifier
}

// Auth authenticates a call according to methodAccess. Unknown methods are
// refused, so a method added to the proto is closed until it is listed.
func (a *Authenticator) Auth(ctx context.Context, fullMethod string) (context.Context, error) {
	switch methodAccess[fullMethod] {
	case accessService:
		return auth.ServiceAuth(ctx, a.Services, a.ACL, fullMethod)
	case accessUser:
		sub, err := a.Users.Verify(auth.BearerToken(ctx))
		if err != nil {
			return nil, err
		}
		return auth.WithUser(ctx, sub), nil
	case accessState:
		return ctx, nil
	}
	return nil, auth.MethodNotListed(fullMethod)
}

// Service implements TokenBrokerServiceServer.
type Service struct {
	tokensv1.UnimplementedTokenBrokerServiceServer
	b *broker.Broker
}

// New returns the service.
func New(b *broker.Broker) *Service { return &Service{b: b} }

// self returns the JWT's subject, checking that a user id in the request,
// if any, names the same user.
func self(ctx context.Context, requested string) (string, error) {
	sub := auth.User(ctx)
	if sub == "" {
		return "", apperr.E(apperr.Unauthenticated, "missing_user", "a user token is required")
	}
	if requested != "" && requested != sub {
		return "", apperr.E(apperr.PermissionDenied, "other_user", "user_id must be the token's subject")
	}
	return sub, nil
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

var statuses = map[string]tokensv1.ConnectionStatus{
	store.StatusActive:  tokensv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE,
	store.StatusBroken:  tokensv1.ConnectionStatus_CONNECTION_STATUS_BROKEN,
	store.StatusRevoked: tokensv1.ConnectionStatus_CONNECTION_STATUS_REVOKED,
}

func toProto(c broker.Connection) *tokensv1.Connection {
	return &tokensv1.Connection{
		UserId: c.UserID, Vendor: c.Vendor, VendorUserId: c.VendorUserID, Status: statuses[c.Status],
		Scopes: c.Scopes, ConnectedAt: ts(c.ConnectedAt), LastRefreshAt: ts(c.LastRefreshAt),
		LastDataAt: ts(c.LastDataAt), Stale: c.Stale,
	}
}

// StartAuthorization implements TokenBrokerServiceServer.
func (s *Service) StartAuthorization(ctx context.Context, req *tokensv1.StartAuthorizationRequest) (*tokensv1.StartAuthorizationResponse, error) {
	user, err := self(ctx, req.GetUserId())
	if err != nil {
		return nil, err
	}
	if err := s.b.RefuseErased(ctx, user); err != nil {
		return nil, err
	}
	u, expires, err := s.b.StartAuthorization(ctx, user, req.GetVendor(), req.GetReturnTo())
	if err != nil {
		return nil, err
	}
	return &tokensv1.StartAuthorizationResponse{AuthorizeUrl: u, ExpiresAt: ts(expires)}, nil
}

// HandleAuthorizationCallback implements TokenBrokerServiceServer.
func (s *Service) HandleAuthorizationCallback(ctx context.Context, req *tokensv1.HandleAuthorizationCallbackRequest) (*tokensv1.HandleAuthorizationCallbackResponse, error) {
	u, err := s.b.AuthorizationCallback(ctx, req.GetVendor(), req.GetCode(), req.GetState(), req.GetError(), req.GetErrorDescription())
	if err != nil {
		return nil, err
	}
	return &tokensv1.HandleAuthorizationCallbackResponse{RedirectUrl: u}, nil
}

// CompleteAuthorization implements TokenBrokerServiceServer.
func (s *Service) CompleteAuthorization(ctx context.Context, req *tokensv1.CompleteAuthorizationRequest) (*tokensv1.CompleteAuthorizationResponse, error) {
	user, err := self(ctx, "")
	if err != nil {
		return nil, err
	}
	c, err := s.b.CompleteAuthorization(ctx, user, req.GetVendor(), req.GetCode(), req.GetState(), req.GetError())
	if err != nil {
		return nil, err
	}
	return &tokensv1.CompleteAuthorizationResponse{Connection: toProto(c)}, nil
}

// GetAccessToken implements TokenBrokerServiceServer.
func (s *Service) GetAccessToken(ctx context.Context, req *tokensv1.GetAccessTokenRequest) (*tokensv1.GetAccessTokenResponse, error) {
	tok, err := s.b.GetAccessToken(ctx, req.GetUserId(), req.GetVendor(), req.GetRejectedAccessToken())
	if err != nil {
		return nil, err
	}
	return &tokensv1.GetAccessTokenResponse{AccessToken: tok.Token, ExpiresAt: ts(tok.ExpiresAt)}, nil
}

// ResolveVendorUser implements TokenBrokerServiceServer.
func (s *Service) ResolveVendorUser(ctx context.Context, req *tokensv1.ResolveVendorUserRequest) (*tokensv1.ResolveVendorUserResponse, error) {
	c, err := s.b.ResolveVendorUser(ctx, req.GetVendor(), req.GetVendorUserId())
	if err != nil {
		return nil, err
	}
	return &tokensv1.ResolveVendorUserResponse{UserId: c.UserID, Status: statuses[c.Status], ConnectedAt: ts(c.ConnectedAt)}, nil
}

// ListConnections implements TokenBrokerServiceServer.
func (s *Service) ListConnections(ctx context.Context, req *tokensv1.ListConnectionsRequest) (*tokensv1.ListConnectionsResponse, error) {
	user, err := self(ctx, req.GetUserId())
	if err != nil {
		return nil, err
	}
	conns, err := s.b.ListConnections(ctx, user)
	if err != nil {
		return nil, err
	}
	resp := &tokensv1.ListConnectionsResponse{}
	for _, c := range conns {
		resp.Connections = append(resp.Connections, toProto(c))
	}
	return resp, nil
}

// RevokeConnection implements TokenBrokerServiceServer.
func (s *Service) RevokeConnection(ctx context.Context, req *tokensv1.RevokeConnectionRequest) (*tokensv1.RevokeConnectionResponse, error) {
	user, err := self(ctx, req.GetUserId())
	if err != nil {
		return nil, err
	}
	ok, err := s.b.RevokeConnection(ctx, user, req.GetVendor())
	if err != nil {
		return nil, err
	}
	return &tokensv1.RevokeConnectionResponse{RevokedAtVendor: ok}, nil
}

// ListActiveConnections implements TokenBrokerServiceServer.
func (s *Service) ListActiveConnections(ctx context.Context, req *tokensv1.ListActiveConnectionsRequest) (*tokensv1.ListActiveConnectionsResponse, error) {
	var since time.Time
	if req.GetConnectedSince() != nil {
		if err := req.GetConnectedSince().CheckValid(); err != nil {
			return nil, apperr.E(apperr.Invalid, "invalid_connected_since", "connected_since is not a valid timestamp")
		}
		since = req.GetConnectedSince().AsTime()
	}
	conns, next, err := s.b.ListActiveConnections(ctx, since, req.GetPageToken(), int(req.GetPageSize()))
	if err != nil {
		return nil, err
	}
	resp := &tokensv1.ListActiveConnectionsResponse{NextPageToken: next}
	for _, c := range conns {
		resp.Connections = append(resp.Connections, toProto(c))
	}
	return resp, nil
}

// ReportDataArrival implements TokenBrokerServiceServer.
func (s *Service) ReportDataArrival(ctx context.Context, req *tokensv1.ReportDataArrivalRequest) (*tokensv1.ReportDataArrivalResponse, error) {
	arrivals := make([]broker.Arrival, len(req.GetArrivals()))
	for i, a := range req.GetArrivals() {
		var at time.Time
		if a.GetArrivedAt().CheckValid() == nil {
			at = a.GetArrivedAt().AsTime()
		}
		arrivals[i] = broker.Arrival{UserID: a.GetUserId(), Vendor: a.GetVendor(), At: at}
	}
	n, err := s.b.ReportDataArrival(ctx, arrivals)
	if err != nil {
		return nil, err
	}
	return &tokensv1.ReportDataArrivalResponse{Freshened: int32(n)}, nil
}

// MarkStaleConnections implements TokenBrokerServiceServer.
func (s *Service) MarkStaleConnections(ctx context.Context, req *tokensv1.MarkStaleConnectionsRequest) (*tokensv1.MarkStaleConnectionsResponse, error) {
	if req.GetStaleAfter().CheckValid() != nil {
		return nil, apperr.E(apperr.Invalid, "invalid_stale_after", "stale_after is required")
	}
	n, counts, err := s.b.MarkStaleConnections(ctx, req.GetStaleAfter().AsDuration())
	if err != nil {
		return nil, err
	}
	return &tokensv1.MarkStaleConnectionsResponse{Marked: int32(n), StaleByVendor: counts}, nil
}

// RecordConnectionEvent implements TokenBrokerServiceServer.
func (s *Service) RecordConnectionEvent(ctx context.Context, req *tokensv1.RecordConnectionEventRequest) (*tokensv1.RecordConnectionEventResponse, error) {
	ev := req.GetEvent()
	typ, ok := recordableTypes[ev.GetType()]
	if !ok {
		return nil, apperr.E(apperr.Invalid, "unsupported_event_type", "only backfill_completed events can be recorded")
	}
	var at time.Time
	if ev.GetOccurredAt().CheckValid() == nil {
		at = ev.GetOccurredAt().AsTime()
	}
	seq, err := s.b.RecordConnectionEvent(ctx, store.Event{
		EventID: ev.GetEventId(), UserID: ev.GetUserId(), Vendor: ev.GetVendor(), Type: typ,
		Reason: ev.GetReason(), OccurredAt: at,
	})
	if err != nil {
		return nil, err
	}
	return &tokensv1.RecordConnectionEventResponse{Sequence: seq}, nil
}

// recordableTypes are the event types RecordConnectionEvent accepts.
var recordableTypes = map[biometricsv1.ConnectionEventType]string{
	biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_BACKFILL_COMPLETED: store.EventBackfillCompleted,
}

// DeleteUserData implements TokenBrokerServiceServer.
func (s *Service) DeleteUserData(ctx context.Context, req *tokensv1.DeleteUserDataRequest) (*tokensv1.DeleteUserDataResponse, error) {
	revs, err := s.b.DeleteUserData(ctx, req.GetUserId())
	if err != nil {
		return nil, err
	}
	resp := &tokensv1.DeleteUserDataResponse{}
	for _, r := range revs {
		resp.Revocations = append(resp.Revocations, &tokensv1.VendorRevocation{
			Vendor: r.Vendor, VendorUserId: r.VendorUserID, RevokedAtVendor: r.RevokedAtVendor,
		})
	}
	return resp, nil
}
