package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"google.golang.org/grpc"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/config"
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
// every call. LoadACL refuses that unless SERVICE_ACL_OPEN=true says so
// explicitly (development); with an ACL everything not listed is denied.
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

// LoadACL reads SERVICE_ACL and SERVICE_ACL_OPEN, recording problems in l,
// and returns the ACL's text. Least privilege is the default: without
// SERVICE_ACL the service refuses to start, unless SERVICE_ACL_OPEN=true
// says explicitly that every SERVICE_TOKENS caller may call every method
// (development only). Whether the methods it names exist is checked once
// the server's services are registered (grpcserver, CheckServed).
func LoadACL(l *config.Loader) string {
	raw := l.String("SERVICE_ACL", "")
	open := l.Bool("SERVICE_ACL_OPEN", false)
	switch {
	case raw == "" && !open:
		l.Check("SERVICE_ACL", false, "is required: list which methods each SERVICE_TOKENS caller may call "+
			"(caller=/package.Service/Method|...;...), or set SERVICE_ACL_OPEN=true to let every caller call every method (development only)")
	case raw != "" && open:
		l.Check("SERVICE_ACL_OPEN", false, "must not be true while SERVICE_ACL is set")
	case raw != "":
		if _, err := ParseACL(raw); err != nil {
			l.Check("SERVICE_ACL", false, err.Error())
		}
	}
	return raw
}

// CheckServed returns an error naming every pattern of the ACL that names
// a service or method the server does not serve (a misspelling would
// otherwise deny silently). services is grpc.Server.GetServiceInfo().
func (a *ACL) CheckServed(services map[string]grpc.ServiceInfo) error {
	if !a.Enforced() {
		return nil
	}
	callers := make([]string, 0, len(a.rules))
	for c := range a.rules {
		callers = append(callers, c)
	}
	sort.Strings(callers)
	var problems []string
	for _, caller := range callers {
		r := a.rules[caller]
		for _, svc := range sortedKeys(r.services) {
			if _, ok := services[svc]; !ok {
				problems = append(problems, fmt.Sprintf("caller %s: /%s/*: no such service here", caller, svc))
			}
		}
		for _, m := range sortedKeys(r.methods) {
			svc, method, _ := splitMethod(m)
			info, ok := services[svc]
			if !ok {
				problems = append(problems, fmt.Sprintf("caller %s: %s: no such service here", caller, m))
				continue
			}
			if !slices.ContainsFunc(info.Methods, func(mi grpc.MethodInfo) bool { return mi.Name == method }) {
				problems = append(problems, fmt.Sprintf("caller %s: %s: no such method", caller, m))
			}
		}
	}
	if len(problems) == 0 {
		return nil
	}
	served := make([]string, 0, len(services))
	for s := range services {
		if !strings.HasPrefix(s, "grpc.health.") && !strings.HasPrefix(s, "grpc.reflection.") {
			served = append(served, s)
		}
	}
	sort.Strings(served)
	return fmt.Errorf("SERVICE_ACL: %s (this server serves %s)", strings.Join(problems, "; "), strings.Join(served, ", "))
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ReasonInvalidServiceToken is the reason of the Unauthenticated error a
// call without a valid service token gets (a missing token included: the
// caller learns nothing about which tokens exist either way).
const ReasonInvalidServiceToken = "invalid_service_token"

// ServiceAuth authenticates a call by its service token and checks it
// against acl: the one service-token check every server uses (as its
// grpcserver auth hook, or for its service-token methods). It puts the
// caller's name in the context.
func ServiceAuth(ctx context.Context, tokens *ServiceTokens, acl *ACL, fullMethod string) (context.Context, error) {
	name, ok := tokens.Authenticate(BearerToken(ctx))
	if !ok {
		return nil, apperr.E(apperr.Unauthenticated, ReasonInvalidServiceToken, "a valid service token is required")
	}
	if err := acl.Check(name, fullMethod); err != nil {
		return nil, err
	}
	return WithCaller(ctx, name), nil
}

// ServiceHook returns ServiceAuth as a grpcserver auth hook, for a server
// whose every method takes a service token.
func ServiceHook(tokens *ServiceTokens, acl *ACL) func(ctx context.Context, fullMethod string) (context.Context, error) {
	return func(ctx context.Context, fullMethod string) (context.Context, error) {
		return ServiceAuth(ctx, tokens, acl, fullMethod)
	}
}

// MethodNotListed is the error of an auth hook for a method it does not
// list: hooks fail closed, so a method added to the proto later is refused
// until someone decides which credential it needs.
func MethodNotListed(fullMethod string) error {
	return apperr.E(apperr.PermissionDenied, ReasonMethodNotAllowed, "method "+fullMethod+" is not allowed")
}
