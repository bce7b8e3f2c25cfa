package store

import (
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// State is the emulator's mutable world behind one lock: the seeded random
// source, the clock, the faults in force, the rate-limit windows, the users
// with their records, the Oura webhook subscriptions, and the OAuth grants,
// codes and tokens. Mu guards every field and every method named
// ...Locked, and the facade's webhook targets too. One lock keeps the order of
// random draws equal to the order of operations, which is what makes a
// sequential script reproducible from a seed.
type State struct {
	Mu sync.Mutex

	rng   *rand.Rand
	clock func() time.Time

	// Faults are the injected faults in force.
	Faults Faults
	// Rate holds the vendors' rate-limit windows.
	Rate RateState

	// Users are the emulated people with their records, by name and in
	// the order they were added; WhoopIDs indexes them by WHOOP user id.
	Users     map[string]*Person
	UserOrder []*Person
	WhoopIDs  map[int64]*Person
	// NextCycleID is the id the next WHOOP cycle gets.
	NextCycleID int64

	// Subs are the Oura webhook subscriptions created through the API, by
	// id and in creation order; ImplicitRemoved holds the
	// "event_type/data_type" keys of the implicit subscription that a 410
	// cancelled.
	Subs            map[string]*Subscription
	SubOrder        []*Subscription
	ImplicitRemoved map[string]bool

	Codes       map[string]*AuthCode
	Access      map[string]*AccessToken
	Refresh     map[string]*RefreshToken
	Grants      []*Grant
	nextGrantID int64
}

// NewState returns an empty State drawing from a PCG source seeded with seed
// and reading time from clock.
func NewState(seed uint64, clock func() time.Time, faults Faults) *State {
	s := &State{
		rng:    rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		clock:  clock,
		Faults: faults,

		Users:       map[string]*Person{},
		WhoopIDs:    map[int64]*Person{},
		NextCycleID: 93_000_000,

		Subs:            map[string]*Subscription{},
		ImplicitRemoved: map[string]bool{},

		Codes:   map[string]*AuthCode{},
		Access:  map[string]*AccessToken{},
		Refresh: map[string]*RefreshToken{},
	}
	s.Rate.Init()
	return s
}

// Now is the clock truncated to milliseconds, the precision the vendors
// serve.
func (s *State) Now() time.Time { return s.clock().UTC().Truncate(time.Millisecond) }

// RandLocked is the seeded source. Caller holds Mu.
func (s *State) RandLocked() *rand.Rand { return s.rng }

// UUIDLocked draws a version-4 UUID from the seeded source. Caller holds Mu.
func (s *State) UUIDLocked() string {
	var b [16]byte
	a, c := s.rng.Uint64(), s.rng.Uint64()
	for i := range 8 {
		b[i] = byte(a >> (8 * i))
		b[8+i] = byte(c >> (8 * i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// ChanceLocked reports whether a draw falls under p; p <= 0 draws nothing so
// enabling a fault does not shift unrelated ids. Caller holds Mu.
func (s *State) ChanceLocked(p float64) bool {
	if p <= 0 {
		return false
	}
	return s.rng.Float64() < p
}

// TokenLocked draws an opaque n-byte token from the seeded source. Caller
// holds Mu.
func (s *State) TokenLocked(n int) string {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		x := s.rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(x >> (8 * j))
		}
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Grant is one authorization of one user for the vendor's app: the family
// of every access and refresh token descended from one authorization code.
type Grant struct {
	ID      int64
	Vendor  Vendor
	User    string // the emulated user's name
	Scopes  map[string]bool
	Revoked bool
	// ExplicitScopes is false when the authorize request named no scope and
	// everything was granted; scope checks are then skipped.
	ExplicitScopes bool
}

// Has reports whether the grant carries scope ("" always).
func (g *Grant) Has(scope string) bool { return scope == "" || !g.ExplicitScopes || g.Scopes[scope] }

// ScopeString is the granted scopes, sorted and space-separated.
func (g *Grant) ScopeString() string {
	out := make([]string, 0, len(g.Scopes))
	for s := range g.Scopes {
		out = append(out, s)
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// AuthCode is an issued authorization code.
type AuthCode struct {
	Vendor        Vendor
	User          string
	RedirectURI   string
	Scopes        map[string]bool
	Explicit      bool
	Challenge     string
	Method        string
	Expires       time.Time
	Used          bool
	IssuedToGrant *Grant
}

// AccessToken is an issued access token.
type AccessToken struct {
	G       *Grant
	Expires time.Time
}

// RefreshToken is an issued refresh token; each is single-use.
type RefreshToken struct {
	G    *Grant
	Used bool
}

// NewGrantLocked records a new grant. Caller holds Mu.
func (s *State) NewGrantLocked(v Vendor, user string, scopes map[string]bool, explicit bool) *Grant {
	s.nextGrantID++
	g := &Grant{ID: s.nextGrantID, Vendor: v, User: user, Scopes: scopes, ExplicitScopes: explicit}
	s.Grants = append(s.Grants, g)
	return g
}

// AuthenticateLocked resolves the request's bearer token to its grant, or
// says why it cannot. Caller holds Mu.
func (s *State) AuthenticateLocked(v Vendor, r *http.Request) (*Grant, string) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		tok, ok = strings.CutPrefix(h, "bearer ")
	}
	if !ok || tok == "" {
		return nil, "missing bearer token"
	}
	at, ok := s.Access[tok]
	switch {
	case !ok || at.G.Vendor != v:
		return nil, "invalid access token"
	case at.G.Revoked:
		return nil, "access revoked"
	case !s.Now().Before(at.Expires):
		return nil, "access token expired"
	}
	return at.G, ""
}
