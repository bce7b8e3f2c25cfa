package stack

import (
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/biobridge/bridge/pkg/topics"
)

// DemoUser is the user the banner's example commands act as.
const DemoUser = "demo-user"

// Banner writes where everything listens, the development credentials the
// stack filled in, and commands that exercise the running suite.
func (s *Stack) Banner(w io.Writer) error {
	e := s.env
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("")
	p("Biometric Bridge devstack is running. Ctrl-C (SIGTERM) stops everything.")
	p("")
	p("  %-22s http://%-22s admin http://%s", "gateway (REST)", e.get("GATEWAY_HTTP_ADDR"), e.get("GATEWAY_ADMIN_ADDR"))
	for _, svc := range []string{"ingest", "tokenbroker", "persistence", "publisher"} {
		up := strings.ToUpper(svc)
		p("  %-22s %-29s admin http://%s", svc+" (gRPC)", e.get(up+"_GRPC_ADDR"), e.get(up+"_ADMIN_ADDR"))
	}
	p("  %-22s http://%-22s admin API under /_admin/ (see emulator/README.md)", "vendor emulator", s.Emulator.Addr())
	if s.kafka != nil {
		p("  %-22s %-29s embedded broker, data in %s", "kafka", s.kafka.Addr(), "the devstack data dir")
	} else {
		p("  %-22s %s", "kafka", e.get("KAFKA_BROKERS"))
	}
	p("  %-22s %s", "postgres", safeURL(e.get("POSTGRES_URL")))
	p("  %-22s %s", "redis", safeURL(e.get("REDIS_URL")))
	p("")
	if len(e.defaulted) > 0 {
		p("Development credentials (these variables were unset; never use these values in production):")
		for _, k := range e.defaulted {
			p("  %s=%s", k, e.filled[k])
		}
		p("")
	}
	token, err := s.UserToken(DemoUser, 24*time.Hour)
	if err != nil {
		return err
	}
	gw := "http://" + e.get("GATEWAY_HTTP_ADDR")
	agent := s.AgentToken()
	p("Try it (copy and paste; grpcurl and kcat if you have them installed):")
	p("  grpcurl -plaintext %s list", e.get("PERSISTENCE_GRPC_ADDR"))
	p("  export USER_JWT=%s   # %s, valid 24 h", token, DemoUser)
	p(`  curl -s -X POST %s/v1/healthkit/samples -H "Authorization: Bearer $USER_JWT" -H 'Content-Type: application/json' \`, gw)
	p(`    -d '{"samples":[{"uuid":"demo-hr-1","type":"HKQuantityTypeIdentifierHeartRate","value":64,"unit":"count/min","start_date":"%s","end_date":"%s","source":{"name":"Apple Watch","bundle_id":"com.apple.health","device_model":"Watch7,1"}}]}'`,
		time.Now().UTC().Add(-time.Minute).Format(time.RFC3339), time.Now().UTC().Add(-time.Minute).Format(time.RFC3339))
	p("  curl -s -H 'Authorization: Bearer %s' %s/v1/users/%s/biometrics/latest", agent, gw, DemoUser)
	p(`  grpcurl -plaintext -H 'authorization: Bearer %s' -d '{"user_id":"%s"}' %s biobridge.biometrics.v1.BiometricsService/GetLatest`, agent, DemoUser, e.get("PERSISTENCE_GRPC_ADDR"))
	p(`  grpcurl -plaintext -H 'authorization: Bearer %s' -d '{}' %s biobridge.publisher.v1.PublisherService/GetStatus`, s.OperatorToken(), e.get("PUBLISHER_GRPC_ADDR"))
	p("  kcat -b %s -t %s -C -o beginning -e -f '%%k %%h\\n'", e.get("KAFKA_BROKERS"), topics.Events)
	p("  curl -s http://%s/_admin/counters", s.Emulator.Addr())
	p("  curl -s %s/openapi.json | head", gw)
	p("")
	_, err = io.WriteString(w, b.String())
	return err
}

// safeURL drops a password from a connection URL before it is printed.
func safeURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
