package stack

import (
	"encoding/base64"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"github.com/biobridge/bridge/pkg/auth"
)

// Development values for every secret a service requires. They are printed
// at start so nobody mistakes a devstack for a production deployment.
var devSecrets = map[string]string{
	"LOG_PSEUDONYM_KEY":       "dev-pseudonym-key-not-for-production",
	"USER_TOKEN_SECRET":       "dev-user-token-secret-not-for-production-0123456789",
	"SERVICE_TOKENS":          "agent:dev-agent-token,operator:dev-operator-token,internal:dev-internal-token",
	"SERVICE_TOKEN":           "dev-internal-token",
	"TOKEN_ENCRYPTION_KEYS":   "dev1:" + base64.StdEncoding.EncodeToString([]byte("dev-token-encryption-key-32bytes")),
	"WHOOP_CLIENT_ID":         "whoop-dev-client",
	"WHOOP_CLIENT_SECRET":     "whoop-dev-secret",
	"OURA_CLIENT_ID":          "oura-dev-client",
	"OURA_CLIENT_SECRET":      "oura-dev-secret",
	"OURA_VERIFICATION_TOKEN": "oura-dev-verification-token",
}

// Default listen addresses of the suite in development: loopback only.
var devAddrs = map[string]string{
	"GATEWAY_HTTP_ADDR":      "127.0.0.1:8080",
	"GATEWAY_ADMIN_ADDR":     "127.0.0.1:9200",
	"INGEST_GRPC_ADDR":       "127.0.0.1:9101",
	"INGEST_ADMIN_ADDR":      "127.0.0.1:9201",
	"TOKENBROKER_GRPC_ADDR":  "127.0.0.1:9102",
	"TOKENBROKER_ADMIN_ADDR": "127.0.0.1:9202",
	"PERSISTENCE_GRPC_ADDR":  "127.0.0.1:9103",
	"PERSISTENCE_ADMIN_ADDR": "127.0.0.1:9203",
	"PUBLISHER_GRPC_ADDR":    "127.0.0.1:9104",
	"PUBLISHER_ADMIN_ADDR":   "127.0.0.1:9204",
	"EMULATOR_ADDR":          "127.0.0.1:8090",
	"KAFKA_ADDR":             "127.0.0.1:9092",
}

// env is the environment every service of the stack reads: the caller's
// variables first, then what the stack filled in.
type env struct {
	base   func(string) string
	filled map[string]string
	// defaulted lists the secrets that got development values.
	defaulted []string
}

func newEnv(base func(string) string) *env {
	return &env{base: base, filled: map[string]string{}}
}

func (e *env) get(k string) string {
	if v := e.base(k); v != "" {
		return v
	}
	return e.filled[k]
}

// setDefault fills k when the caller left it unset.
func (e *env) setDefault(k, v string) {
	if e.base(k) == "" {
		e.filled[k] = v
	}
}

func (e *env) fillSecrets() {
	keys := make([]string, 0, len(devSecrets))
	for k := range devSecrets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		// With an identity provider's key set configured, no HS256 secret
		// is made up: the two are exclusive.
		if k == "USER_TOKEN_SECRET" && e.base("USER_JWKS_URL") != "" {
			continue
		}
		if e.base(k) == "" {
			e.filled[k] = devSecrets[k]
			e.defaulted = append(e.defaulted, k)
		}
	}
}

// fillAddrs sets every listen address and the client targets that point at
// them. With ephemeral set, free loopback ports are picked (tests run many
// stacks side by side); the addresses are still known before any service
// starts, because services need each other's addresses at construction.
func (e *env) fillAddrs(ephemeral bool) error {
	keys := make([]string, 0, len(devAddrs))
	for k := range devAddrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := devAddrs[k]
		if ephemeral {
			p, err := freePort()
			if err != nil {
				return err
			}
			v = p
		}
		e.setDefault(k, v)
	}
	e.setDefault("INGEST_TARGET", e.get("INGEST_GRPC_ADDR"))
	e.setDefault("TOKENBROKER_TARGET", e.get("TOKENBROKER_GRPC_ADDR"))
	e.setDefault("PERSISTENCE_TARGET", e.get("PERSISTENCE_GRPC_ADDR"))
	e.setDefault("PUBLISHER_TARGET", e.get("PUBLISHER_GRPC_ADDR"))
	e.setDefault("PUBLIC_BASE_URL", "http://"+e.get("GATEWAY_HTTP_ADDR"))
	return nil
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("pick a free port: %w", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		return "", err
	}
	return addr, nil
}

// devACL is the SERVICE_ACL each service of the stack gets: the calls the
// stack's own wiring makes (every service presents SERVICE_TOKEN, the
// caller named internal here) and what agents and operators may do, the
// same least-privilege shape as a production deployment. A new RPC that
// the wiring calls must be listed here, as in deploy/.
var devACL = map[string]func(internal string) string{
	"persistence": func(internal string) string {
		return internal + "=" + methods("biobridge.persistence.v1.PersistenceService",
			"WriteEvents", "DeleteRecords", "AppendConnectionEvents", "LeaseOutbox", "RenewOutboxLease", "AckOutbox", "NackOutbox", "GetOutboxStats",
			"DeleteUserData") +
			";agent=/biobridge.biometrics.v1.BiometricsService/*"
	},
	"tokenbroker": func(internal string) string {
		return internal + "=" + methods("biobridge.tokens.v1.TokenBrokerService",
			"GetAccessToken", "ResolveVendorUser", "ListActiveConnections", "ReportDataArrival", "MarkStaleConnections",
			"RecordConnectionEvent", "DeleteUserData")
	},
	"ingest": func(string) string {
		return "operator=" + methods("biobridge.ingest.v1.IngestService", "ListJobs", "RetryJobs", "GetBackfillProgress", "DeleteUserData")
	},
	"publisher": func(string) string { return "operator=/biobridge.publisher.v1.PublisherService/*" },
}

func methods(service string, names ...string) string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = "/" + service + "/" + n
	}
	return strings.Join(out, "|")
}

// internalCaller checks that the token every service presents
// (SERVICE_TOKEN) is one the services accept (SERVICE_TOKENS) and returns
// its caller name. Without this check a mismatch starts a stack in which
// every internal call is refused, and an app reads the refusals as "log
// in again".
func (e *env) internalCaller() (string, error) {
	tokens, err := auth.ParseServiceTokens(e.get("SERVICE_TOKENS"))
	if err != nil {
		return "", fmt.Errorf("SERVICE_TOKENS: %w", err)
	}
	name, ok := tokens.Authenticate(e.get("SERVICE_TOKEN"))
	if !ok {
		return "", fmt.Errorf("SERVICE_TOKEN (%s) is not among SERVICE_TOKENS (callers %s): every service presents SERVICE_TOKEN to the others, which accept only SERVICE_TOKENS, so every internal call would be refused; add it to SERVICE_TOKENS (internal:<token>), or unset SERVICE_TOKEN and SERVICE_TOKENS to use the development values",
			e.origin("SERVICE_TOKEN"), strings.Join(tokens.Names(), ", "))
	}
	return name, nil
}

// origin says where a variable's value came from, for error messages.
func (e *env) origin(k string) string {
	if e.base(k) != "" {
		return "set by you"
	}
	return "a development value"
}

// forService is the environment one service of the stack reads: the
// stack's environment with that service's SERVICE_ACL, unless
// SERVICE_ACL_OPEN=true asks for none.
func (e *env) forService(service, internal string) func(string) string {
	return func(k string) string {
		if open, _ := strconv.ParseBool(e.get("SERVICE_ACL_OPEN")); k == "SERVICE_ACL" && !open {
			if acl, ok := devACL[service]; ok {
				return acl(internal)
			}
		}
		return e.get(k)
	}
}
