package auth

import (
	"errors"
	"fmt"
	"strings"

	"github.com/biobridge/bridge/pkg/apperr"
)

// ReasonMethodNotAllowed is the reason of the PermissionDenied error
// ACL.Check returns.
const ReasonMethodNotAllowed = "method_not_allowed"

// ACL says which gRPC methods each service-token caller may call
// (SERVICE_ACL). A service token proves who the caller is; without an ACL
// every authenticated caller could call every service-token method of a
// server, so the token meant for agents' reads could also write, delete or
// drain the outbox.
//
// An ACL parsed from an empty string, like a nil *ACL, is open: it allows
// every call. That keeps development stacks and tests working without one;
// production sets SERVICE_ACL on every service, and then everything not
// listed is denied.
type ACL struct {
	// rules is nil for an open ACL.
	rules map[string]*callerRule
}

type callerRule struct {
	all      bool
	services map[string]bool // "biobridge.x.v1.XService"
	methods  map[string]bool // "/biobridge.x.v1.XService/Method"
}

// ParseACL parses "caller=pattern|pattern;caller2=pattern". A pattern is a
// full method ("/biobridge.persistence.v1.PersistenceService/WriteEvents"),
// every method of one service ("/biobridge.biometrics.v1.BiometricsService/*")
// or "*" (every method). Blank input gives an open ACL. Errors name each bad
// entry by position and caller.
func ParseACL(s string) (*ACL, error) {
	if strings.TrimSpace(s) == "" {
		return &ACL{}, nil
	}
	a := &ACL{rules: map[string]*callerRule{}}
	var problems []string
	for i, raw := range strings.Split(s, ";") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		name, list, ok := strings.Cut(raw, "=")
		name, list = strings.TrimSpace(name), strings.TrimSpace(list)
		switch {
		case !ok || name == "":
			problems = append(problems, fmt.Sprintf("entry %d: want caller=pattern|pattern", i+1))
			continue
		case strings.ContainsAny(name, " \t,:|"):
			problems = append(problems, fmt.Sprintf("entry %d (%q): caller name must not contain spaces, ',', ':' or '|'", i+1, name))
			continue
		case a.rules[name] != nil:
			problems = append(problems, fmt.Sprintf("entry %d (%s): duplicate caller", i+1, name))
			continue
		case list == "":
			problems = append(problems, fmt.Sprintf("entry %d (%s): no methods (leave the caller out to deny it everything)", i+1, name))
			continue
		}
		r := &callerRule{services: map[string]bool{}, methods: map[string]bool{}}
		bad := false
		for _, p := range strings.Split(list, "|") {
			p = strings.TrimSpace(p)
			if msg := r.add(p); msg != "" {
				problems = append(problems, fmt.Sprintf("entry %d (%s): pattern %q: %s", i+1, name, p, msg))
				bad = true
			}
		}
		if !bad {
			a.rules[name] = r
		}
	}
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "; "))
	}
	if len(a.rules) == 0 {
		return nil, errors.New("no entries (leave it empty to allow every caller every method)")
	}
	return a, nil
}

// add records pattern p, or says what is wrong with it.
func (r *callerRule) add(p string) string {
	if p == "*" {
		r.all = true
		return ""
	}
	service, method, ok := splitMethod(p)
	switch {
	case !ok:
		return `want "*", "/package.Service/*" or "/package.Service/Method"`
	case method == "*":
		r.services[service] = true
	case strings.Contains(method, "*"):
		return "a wildcard must be a whole method name"
	default:
		r.methods[p] = true
	}
	return ""
}

// splitMethod splits "/service/method" into its parts; ok is false unless
// both are non-empty and free of further slashes, and the service names no
// wildcard.
func splitMethod(fullMethod string) (service, method string, ok bool) {
	rest, found := strings.CutPrefix(fullMethod, "/")
	if !found {
		return "", "", false
	}
	service, method, found = strings.Cut(rest, "/")
	if !found || service == "" || method == "" || strings.Contains(method, "/") ||
		strings.ContainsAny(service, "* \t") || strings.ContainsAny(method, " \t") {
		return "", "", false
	}
	return service, method, true
}

// Enforced reports whether the ACL restricts anything (SERVICE_ACL set).
func (a *ACL) Enforced() bool { return a != nil && a.rules != nil }

// Allowed reports whether caller may call fullMethod
// ("/package.Service/Method"). An open ACL allows everything; an enforced
// one denies callers it does not list and methods their patterns do not
// match.
func (a *ACL) Allowed(caller, fullMethod string) bool {
	if !a.Enforced() {
		return true
	}
	r := a.rules[caller]
	if r == nil {
		return false
	}
	if r.all || r.methods[fullMethod] {
		return true
	}
	service, _, ok := splitMethod(fullMethod)
	return ok && r.services[service]
}

// Check returns nil when caller may call fullMethod, otherwise a
// PermissionDenied *apperr.Error with reason ReasonMethodNotAllowed. The
// message names the method and the (already authenticated) caller, never a
// token.
func (a *ACL) Check(caller, fullMethod string) error {
	if a.Allowed(caller, fullMethod) {
		return nil
	}
	return apperr.E(apperr.PermissionDenied, ReasonMethodNotAllowed,
		fmt.Sprintf("caller %q may not call %s", caller, fullMethod))
}
