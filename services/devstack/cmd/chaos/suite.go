package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/services/devstack/stack"
)

// ports is the harness's port plan: base+offset for every listener, so a
// run stays inside one block of the machine's ports.
type ports struct{ base int }

func (p ports) addr(off int) string { return "127.0.0.1:" + strconv.Itoa(p.base+off) }

const (
	offPostgres, offPostgresProxy = 432, 433
	offRedis, offRedisProxy       = 379, 380
	offKafka, offKafkaProxy       = 92, 93
	offEmulator, offEmulatorProxy = 90, 91
	offGatewayHTTP, offGatewayAdm = 80, 200
	offPersistence                = 103 // grpc; admin +100
	// offPublic is the bridge's public URL as vendors and browsers see
	// it: the webhook recorder in front of the gateway.
	offPublic = 81
	// offIngestToBroker is ingest's own way to the token broker replicas,
	// so a partition cuts ingest off the broker and nothing else.
	offIngestToBroker = 312
)

// replicaOffsets are the gRPC port offsets of each replicated service's
// replicas (admin ports are 100 above).
// lbOffsets are the ports of the round-robin proxies in front of the
// replicas: what the other services are given as target.
var lbOffsets = map[string]int{"ingest": 301, "tokenbroker": 302, "publisher": 304}

var replicaOffsets = map[string][]int{
	"ingest":      {101, 111},
	"tokenbroker": {102, 112},
	"publisher":   {104, 114},
}

// suite is every process of one chaos run and the proxies between them.
type suite struct {
	dir    string
	ports  ports
	pgBin  string
	seed   uint64
	pgCred *syscall.Credential

	postgres, redis, kafka, emulator *proc
	persistence, gateway             *proc
	replicas                         map[string][]*proc

	pgProxy, redisProxy, kafkaProxy, emuProxy *proxy
	// lbs spread connections over each replicated service's replicas.
	lbs map[string]*proxy
	// ingestToBroker is the path from ingest to the token broker replicas.
	ingestToBroker *proxy
	// public records the webhooks the vendors deliver.
	public *recorder

	mu    sync.Mutex
	procs []*proc
	// crashes counts processes that exited while being restarted.
	crashes atomic.Int64
}

// userSecret is the HS256 secret user tokens are signed with.
func userSecret() []byte { return []byte(stack.DevSecrets()["USER_TOKEN_SECRET"]) }

// agentToken is the service token a reader of latest presents.
func agentToken() string {
	for _, kv := range strings.Split(stack.DevSecrets()["SERVICE_TOKENS"], ",") {
		if name, tok, ok := strings.Cut(kv, ":"); ok && name == "agent" {
			return tok
		}
	}
	return ""
}

func (s *suite) directPostgresURL() string {
	return "postgres://postgres@" + s.ports.addr(offPostgres) + "/biobridge?sslmode=disable"
}

func (s *suite) gatewayURL() string  { return "http://" + s.ports.addr(offGatewayHTTP) }
func (s *suite) emulatorURL() string { return "http://" + s.ports.addr(offEmulator) }

// build compiles the real binaries into dir/bin.
func build(ctx context.Context, root, binDir string) error {
	targets := map[string]string{
		"gateway":     "./services/gateway/cmd/gateway",
		"ingest":      "./services/ingest/cmd/ingest",
		"tokenbroker": "./services/tokenbroker/cmd/tokenbroker",
		"persistence": "./services/persistence/cmd/persistence",
		"publisher":   "./services/publisher/cmd/publisher",
		"vendoremu":   "./emulator/cmd/vendoremu",
	}
	names := make([]string, 0, len(targets))
	for n := range targets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(binDir, n), targets[n])
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", targets[n], err, out)
		}
	}
	return nil
}

func (s *suite) add(p *proc) *proc {
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p
}

// commonEnv is what every service reads: development secrets, the private
// stores through their proxies, and the other services' targets (a
// replicated service as a round-robin list of its replicas).
func (s *suite) commonEnv() map[string]string {
	env := stack.DevSecrets()
	targets := func(svc string) string { return s.lbs[svc].Addr() }
	emu := "http://" + s.emuProxy.Addr()
	for k, v := range map[string]string{
		"POSTGRES_URL":           "postgres://postgres@" + s.pgProxy.Addr() + "/biobridge?sslmode=disable",
		"REDIS_URL":              "redis://" + s.redisProxy.Addr() + "/0",
		"KAFKA_BROKERS":          s.kafkaProxy.Addr(),
		"KAFKA_TOPIC_PARTITIONS": "3",
		// The bridge's own WHOOP budget (ingest and the token broker share
		// it), matching the emulator's raised limit.
		"WHOOP_RATE_LIMIT":          "3000",
		"KAFKA_REPLICATION_FACTOR":  "1",
		"KAFKA_MIN_INSYNC_REPLICAS": "1",
		"INGEST_TARGET":             targets("ingest"),
		"TOKENBROKER_TARGET":        targets("tokenbroker"),
		"PUBLISHER_TARGET":          targets("publisher"),
		"PERSISTENCE_TARGET":        s.ports.addr(offPersistence),
		"WHOOP_API_URL":             emu + "/whoop",
		"OURA_API_URL":              emu + "/oura",
		"OURA_AUTHORIZE_URL":        emu + "/oura/oauth/authorize",
		"OAUTH_RETURN_URLS":         stack.DevAppReturnURL,
		"PUBLIC_BASE_URL":           s.public.URL(),
		"LOG_FORMAT":                "text",
		"PATH":                      os.Getenv("PATH"),
		"HOME":                      os.Getenv("HOME"),
	} {
		env[k] = v
	}
	return env
}

func envList(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

func (s *suite) serviceProc(bin, name, prefix, grpcAddr, adminAddr string) *proc {
	env := s.commonEnv()
	env[prefix+"_GRPC_ADDR"] = grpcAddr
	env[prefix+"_ADMIN_ADDR"] = adminAddr
	svc := strings.ToLower(prefix)
	if acl := stack.ServiceACL(svc, "internal"); acl != "" {
		env["SERVICE_ACL"] = acl
	}
	return s.add(&proc{name: name, path: filepath.Join(bin, svc), env: envList(env),
		log: filepath.Join(s.dir, "logs", name+".log"), ready: "http://" + adminAddr + "/readyz"})
}

// start brings the whole suite up: stores, broker, emulator, proxies, then
// the services in dependency order, each waited on until ready.
func (s *suite) start(ctx context.Context, self, binDir string) error {
	if err := os.MkdirAll(filepath.Join(s.dir, "logs"), 0o755); err != nil {
		return err
	}
	// PostgreSQL: a cluster of its own, run as the postgres user when root.
	var err error
	if s.pgCred, err = postgresCredential(); err != nil {
		return err
	}
	pgDir := filepath.Join(s.dir, "pg", "data")
	if err := os.Chmod(s.dir, 0o755); err != nil {
		return err
	}
	if err := initPostgres(s.pgBin, pgDir, s.pgCred); err != nil {
		return err
	}
	pgPort := strconv.Itoa(s.ports.base + offPostgres)
	s.postgres = s.add(&proc{name: "postgres", path: filepath.Join(s.pgBin, "postgres"),
		args: []string{"-D", pgDir, "-p", pgPort, "-k", filepath.Dir(pgDir), "-c", "listen_addresses=127.0.0.1",
			"-c", "fsync=off", "-c", "max_connections=200", "-c", "shared_buffers=128MB"},
		cred: s.pgCred, log: filepath.Join(s.dir, "logs", "postgres.log"), addr: s.ports.addr(offPostgres)})
	s.redis = s.add(&proc{name: "redis", path: "redis-server",
		args: []string{"--port", strconv.Itoa(s.ports.base + offRedis), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"},
		log:  filepath.Join(s.dir, "logs", "redis.log"), addr: s.ports.addr(offRedis)})
	if s.redis.path, err = exec.LookPath("redis-server"); err != nil {
		return err
	}
	// Proxies first: the broker advertises its proxy, and services only
	// ever see the proxies.
	for _, pp := range []struct {
		p        **proxy
		from, to int
	}{{&s.pgProxy, offPostgresProxy, offPostgres}, {&s.redisProxy, offRedisProxy, offRedis},
		{&s.kafkaProxy, offKafkaProxy, offKafka}, {&s.emuProxy, offEmulatorProxy, offEmulator}} {
		if *pp.p, err = newProxy(s.ports.addr(pp.from), s.ports.addr(pp.to)); err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
	}
	if s.ingestToBroker, err = newProxy(s.ports.addr(offIngestToBroker), s.ports.addr(replicaOffsets["tokenbroker"][0]), s.ports.addr(replicaOffsets["tokenbroker"][1])); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	if s.public, err = newRecorder(s.ports.addr(offPublic), s.gatewayURL()); err != nil {
		return fmt.Errorf("recorder: %w", err)
	}
	s.lbs = map[string]*proxy{}
	for svc, offs := range replicaOffsets {
		var ups []string
		for _, off := range offs {
			ups = append(ups, s.ports.addr(off))
		}
		if s.lbs[svc], err = newProxy(s.ports.addr(lbOffsets[svc]), ups...); err != nil {
			return fmt.Errorf("balancer: %w", err)
		}
	}
	s.kafka = s.add(&proc{name: "kafka", path: self,
		args: []string{"kafka", "-addr", s.ports.addr(offKafka), "-advertise", s.kafkaProxy.Addr(), "-data", filepath.Join(s.dir, "kafka")},
		env:  []string{"PATH=" + os.Getenv("PATH")}, log: filepath.Join(s.dir, "logs", "kafka.log"), addr: s.ports.addr(offKafka)})
	emuEnv := stack.DevSecrets()
	emuEnv["PUBLIC_BASE_URL"] = s.public.URL()
	emuEnv["VENDOREMU_SEED"] = strconv.FormatUint(s.seed, 10)
	// WHOOP's default budget (100 requests a minute for the whole app) is
	// below what the webhook load and its token storms fetch; a production
	// app has a raised limit too.
	emuEnv["VENDOREMU_WHOOP_RATE_LIMIT"] = "3000"
	emuEnv["PATH"] = os.Getenv("PATH")
	s.emulator = s.add(&proc{name: "vendoremu", path: filepath.Join(binDir, "vendoremu"),
		args: []string{"-addr", s.ports.addr(offEmulator)}, env: envList(emuEnv),
		log: filepath.Join(s.dir, "logs", "vendoremu.log"), addr: s.ports.addr(offEmulator)})
	for _, p := range []*proc{s.postgres, s.redis, s.kafka, s.emulator} {
		if err := p.start(); err != nil {
			return err
		}
		if err := p.waitReady(ctx, 60*time.Second); err != nil {
			return err
		}
	}
	if err := pgstore.EnsureDatabase(ctx, s.directPostgresURL()); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	if err := s.setVendorFaults(ctx, baseVendorFaults); err != nil {
		return err
	}

	s.persistence = s.serviceProc(binDir, "persistence", "PERSISTENCE", s.ports.addr(offPersistence), s.ports.addr(offPersistence+100))
	s.replicas = map[string][]*proc{}
	for _, svc := range []string{"tokenbroker", "ingest", "publisher"} {
		for i, off := range replicaOffsets[svc] {
			name := fmt.Sprintf("%s-%c", svc, 'a'+i)
			p := s.serviceProc(binDir, name, strings.ToUpper(svc), s.ports.addr(off), s.ports.addr(off+100))
			switch svc {
			case "ingest":
				p.env = append(p.env, ingestEnv(s.ingestToBroker.Addr())...)
			case "publisher":
				// A killed replica's leased entries wait for its lease to
				// run out: 10 s instead of 30 s keeps that within a scenario
				// (and has leases expire under a slow Kafka more often).
				p.env = append(p.env, "PUBLISH_LEASE_DURATION=10s")
			}
			s.replicas[svc] = append(s.replicas[svc], p)
		}
	}
	genv := s.commonEnv()
	genv["GATEWAY_HTTP_ADDR"] = s.ports.addr(offGatewayHTTP)
	genv["GATEWAY_ADMIN_ADDR"] = s.ports.addr(offGatewayAdm)
	s.gateway = s.add(&proc{name: "gateway", path: filepath.Join(binDir, "gateway"), env: envList(genv),
		log: filepath.Join(s.dir, "logs", "gateway.log"), ready: "http://" + s.ports.addr(offGatewayAdm) + "/readyz"})

	order := []*proc{s.persistence}
	for _, svc := range []string{"tokenbroker", "ingest", "publisher"} {
		order = append(order, s.replicas[svc]...)
	}
	order = append(order, s.gateway)
	for _, p := range order {
		if err := p.start(); err != nil {
			return err
		}
		if err := p.waitReady(ctx, 90*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// restart starts p again and waits until it is ready. A process that
// exits while starting (a dependency still slow or away) is started again
// a second later, as a supervisor does, for up to 90 s; each such exit is
// counted in crashes.
func (s *suite) restart(ctx context.Context, p *proc) error {
	deadline := time.Now().Add(90 * time.Second)
	for {
		if err := p.start(); err != nil {
			return err
		}
		err := p.waitReady(ctx, time.Until(deadline))
		if err == nil || p.running() || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		s.crashes.Add(1)
		sleep(ctx, time.Second)
	}
}

// close stops every process (services first, stores last) and the proxies.
func (s *suite) close() error {
	s.mu.Lock()
	procs := append([]*proc(nil), s.procs...)
	s.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop()
	}
	ps := []*proxy{s.pgProxy, s.redisProxy, s.kafkaProxy, s.emuProxy, s.ingestToBroker}
	for _, p := range s.lbs {
		ps = append(ps, p)
	}
	for _, p := range ps {
		if p != nil {
			if err := p.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if s.public != nil {
		errs = append(errs, s.public.Close())
	}
	return errors.Join(errs...)
}

// ingestEnv is what ingest gets on top of the common environment: its own
// path to the token broker, and job retries and leases compressed so a
// scenario's failed fetches are retried (and a killed replica's jobs taken
// over) within the scenario rather than over minutes. Compressing the
// backoff shortens the retry horizon too, so the attempts are raised to
// keep it longer than the longest fault, as production's is (8 attempts
// from 2s up to 10m: about 4 minutes; here 20 attempts from 500ms up to
// 5s: about 90 s, against faults of at most 21 s). With 8 attempts a job
// whose vendor answered 500 through a whole 21 s burst went dead, which
// the checker reported as an acknowledged webhook never stored. The
// environment list's later entries win (exec uses the last of a
// duplicated name).
func ingestEnv(broker string) []string {
	return []string{"TOKENBROKER_TARGET=" + broker, "INGEST_RETRY_BASE=500ms", "INGEST_RETRY_MAX=5s",
		"INGEST_JOB_MAX_ATTEMPTS=20", "INGEST_JOB_LEASE=10s"}
}

// baseVendorFaults are the emulator's faults under every scenario's load:
// webhooks duplicated, reordered and dropped as vendors do.
var baseVendorFaults = map[string]any{"webhook_duplicate_rate": 0.1, "webhook_drop_rate": 0.05, "webhook_reorder": true}

// setVendorFaults replaces the emulator's faults.
func (s *suite) setVendorFaults(ctx context.Context, f map[string]any) error {
	return emuAdmin(ctx, s.emulatorURL(), http.MethodPut, "/_admin/faults", f, nil)
}
