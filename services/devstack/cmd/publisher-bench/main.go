// Command publisher-bench measures the publisher end to end (the real
// persistence service on a fresh database, the real publisher, an embedded
// Kafka broker on a loopback port, a sarama consumer), each number against a
// baseline measured in the same run:
//
//   - publisher.commit_to_publish_p99_ms: at a steady write rate, the time
//     from the acknowledgement of an event's write (its commit is durable)
//     until a consumer receives it. Baseline: the same
//     publisher polling the outbox every 100 ms instead of long-polling,
//     the way a typical polling relay works.
//   - publisher.max_publish_events_per_s: how fast the publisher drains a
//     prefilled outbox (lease, produce, ack). Baseline: raw sarama with the
//     same producer settings sending the same messages straight to the
//     broker, with no outbox in between.
//
// -only drain skips the latency phases; -cpuprofile writes a CPU profile of
// the drain through the publisher (not of the prefill or the baselines).
//
// It creates and drops its own database and writes <out>/publisher.json for
// `make bench`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/benchreport"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/devstack/benchenv"
	devstack "github.com/biobridge/bridge/services/devstack/stack"
	persistence "github.com/biobridge/bridge/services/persistence/server"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/kafkadev"
	"github.com/biobridge/bridge/services/publisher/outbox"
	"github.com/biobridge/bridge/services/publisher/server"
	"github.com/biobridge/bridge/services/publisher/testenv"
)

func main() { service.ExecFunc(run) }

type options struct {
	out      string
	pgURL    string
	rate     int
	duration time.Duration
	users    int
	backlog  int
	// cpuProfile, when set, receives a CPU profile of the drain through
	// the publisher (not of its baselines).
	cpuProfile string
	// drainOnly skips the steady-rate phases.
	drainOnly bool
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) (err error) {
	fs := flag.NewFlagSet("publisher-bench", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var o options
	fs.StringVar(&o.out, "out", ".bench", "directory for the results file")
	fs.StringVar(&o.pgURL, "postgres", firstSet(getenv("TEST_POSTGRES_URL"), getenv("POSTGRES_URL"), "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"),
		"PostgreSQL server URL (a fresh database is created on it and dropped)")
	fs.IntVar(&o.rate, "rate", 500, "steady write rate for the latency measurement, events per second")
	fs.DurationVar(&o.duration, "duration", 8*time.Second, "length of each steady-rate phase")
	fs.IntVar(&o.users, "users", 50, "users written to per round in the steady phases")
	fs.IntVar(&o.backlog, "backlog", 20000, "outbox entries drained in the throughput measurement")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the drain through the publisher to this file")
	only := fs.String("only", "", "run only this measurement (drain: max_publish_events_per_s)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if o.rate < 1 || o.users < 1 || o.backlog < 1 || o.duration <= 0 {
		return errors.New("-rate, -users, -backlog and -duration must be positive")
	}
	switch *only {
	case "":
	case "drain":
		o.drainOnly = true
	default:
		return fmt.Errorf("-only: unknown measurement %q", *only)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	st, err := startStack(ctx, o, logger)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, st.close()) }()

	var results []benchreport.Result
	if !o.drainOnly {
		r, err := latency(ctx, st, o)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	drain, err := throughput(ctx, st, o)
	if err != nil {
		return fmt.Errorf("throughput phase: %w", err)
	}
	raw, err := rawThroughput(ctx, st, o)
	if err != nil {
		return fmt.Errorf("raw sarama baseline: %w", err)
	}
	leaseOnly, err := outboxOnly(ctx, st, o)
	if err != nil {
		return fmt.Errorf("outbox-only drain: %w", err)
	}

	results = append(results,
		benchreport.Higher("publisher.max_publish_events_per_s", "events/s", drain, raw, fmt.Sprintf(
			"drain of a prefilled outbox of %d entries (%d users, one reading each): lease, idempotent produce (acks=all, "+
				"1 request in flight), ack; 2 workers, batches of 500. Baseline: raw sarama with the same producer settings "+
				"sending the same messages in batches of 500 from 2 goroutines straight to the broker, no outbox. "+
				"For scale: leasing and acking the same backlog with no Kafka at all (one loop) drains %.0f entries/s, "+
				"so the outbox lease, not the producer, bounds this number",
			o.backlog, o.backlog/20, leaseOnly)))
	for _, r := range results {
		fmt.Fprintf(stdout, "%s = %.1f %s (baseline %.1f, ratio %.2f)\n  %s\n", r.Name, r.Value, r.Unit, r.Baseline, r.Ratio, r.Notes)
	}
	return benchreport.SaveGroup(o.out, benchreport.Group{
		Group:   "publisher",
		Method:  "one process: persistence (fresh PostgreSQL database) + publisher + embedded kfake broker on loopback; sarama consumer",
		Results: results,
	})
}

// stack is the suite the benchmark drives, started by the devstack's stack
// builder: persistence on a fresh database (without Redis: the publisher
// does not read latest values) and the embedded Kafka broker; each phase
// starts a publisher of its own.
type stack struct {
	st      *devstack.Stack
	broker  *kafkadev.Broker
	conn    *grpc.ClientConn
	writer  *testenv.Writer
	outbox  *outbox.Client
	cfg     server.Config
	dbURL   string
	logger  *slog.Logger
	cleanup []func() error
}

func startStack(ctx context.Context, o options, logger *slog.Logger) (_ *stack, err error) {
	s := &stack{logger: logger}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.close())
		}
	}()
	dbURL, drop, err := benchenv.Database(ctx, o.pgURL, "publisher")
	if err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, drop)
	s.dbURL = dbURL
	if err := persistence.Migrate(ctx, dbURL); err != nil {
		return nil, err
	}
	vars := map[string]string{"POSTGRES_URL": dbURL}
	if s.st, err = devstack.Start(ctx, devstack.Options{
		Getenv:     func(k string) string { return vars[k] },
		Ephemeral:  true,
		Components: []devstack.Component{devstack.Kafka, devstack.Persistence},
		NoTracing:  true,
		Logger:     logger,
		Configure: devstack.Hooks{
			Persistence: func(c *persistence.Config) {
				c.RedisURL = ""
				// A short fallback poll keeps nack retry delays short.
				c.OutboxPollInterval = 50 * time.Millisecond
				c.GracePeriod = 2 * time.Second
			},
			// Production settings, on as many partitions as production's
			// default.
			Publisher: func(c *server.Config) { c.TopicPartitions = 12 },
		},
	}); err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, s.st.Run(context.WithoutCancel(ctx)))
	s.broker = s.st.Kafka()
	if s.conn, err = grpc.NewClient(s.st.Persistence().GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(grpcclient.ServiceCredentials(s.st.ServiceToken()))); err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, s.conn.Close)
	s.writer = testenv.NewWriter(s.conn)
	s.outbox = outbox.New(s.conn)
	s.cfg = s.st.Configs().Publisher
	return s, nil
}

// startPublisher starts a publisher with the stack's configuration, hook
// applied; the returned function stops it.
func (s *stack) startPublisher(ctx context.Context, hook func(*server.Config)) (stop func(), err error) {
	if err := s.st.Restart(ctx, devstack.Publisher, devstack.Hooks{Publisher: hook}); err != nil {
		return nil, err
	}
	return func() { _ = s.st.Stop(devstack.Publisher) }, nil
}

// close runs the cleanups in reverse order.
func (s *stack) close() error {
	var errs []error
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		errs = append(errs, s.cleanup[i]())
	}
	s.cleanup = nil
	return errors.Join(errs...)
}

type latencies struct {
	p50, p99 float64
	n        int
	rate     float64
}

// steady writes a round of one event per user at the configured rate
// while a publisher (its configuration adjusted by hook) runs, and
// measures commit-to-consumer latency of every event.
func steady(ctx context.Context, st *stack, hook func(*server.Config), prefix string, o options) (latencies, error) {
	stopPublisher, err := st.startPublisher(ctx, hook)
	if err != nil {
		return latencies{}, err
	}
	defer stopPublisher()

	var mu sync.Mutex
	arrived := map[string]time.Time{}
	c, err := testenv.Collect([]string{st.broker.Addr()}, kafka.TopicEvents, func(r testenv.Received) {
		if strings.HasPrefix(r.Key, prefix+"-") {
			mu.Lock()
			arrived[r.EventID] = r.At
			mu.Unlock()
		}
	})
	if err != nil {
		return latencies{}, err
	}
	defer func() { _ = c.Close() }()

	users := testenv.Users(prefix, o.users)
	interval := time.Duration(float64(time.Second) * float64(o.users) / float64(o.rate))
	rounds := max(1, int(o.duration/interval))
	tick := time.NewTicker(interval)
	defer tick.Stop()
	start := time.Now()
	for range rounds {
		select {
		case <-ctx.Done():
			return latencies{}, ctx.Err()
		case <-tick.C:
		}
		if err := st.writer.WriteRound(ctx, users, len(users)); err != nil {
			return latencies{}, err
		}
	}
	elapsed := time.Since(start)
	want := rounds * len(users)
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(arrived)
		mu.Unlock()
		if n >= want {
			break
		}
		if time.Now().After(deadline) {
			return latencies{}, fmt.Errorf("%d of %d events arrived", n, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	// From the moment the write was acknowledged (the commit is durable)
	// to arrival. An event can arrive a hair before its write's response
	// does; that shows as a small negative latency and is kept.
	samples := make([]float64, 0, len(arrived))
	for id, at := range arrived {
		committed, ok := st.writer.CommittedAt(id)
		if !ok {
			return latencies{}, fmt.Errorf("event %s arrived but was not written in this run", id)
		}
		samples = append(samples, float64(at.Sub(committed).Microseconds())/1000)
	}
	slices.Sort(samples)
	return latencies{
		p50:  percentile(samples, 0.50),
		p99:  percentile(samples, 0.99),
		n:    len(samples),
		rate: float64(want) / elapsed.Seconds(),
	}, nil
}

func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// throughput prefills the outbox with the publisher stopped, then starts
// one and measures how fast it empties the outbox.
func throughput(ctx context.Context, st *stack, o options) (_ float64, err error) {
	total, err := prefill(ctx, st, "drain", o.backlog)
	if err != nil {
		return 0, err
	}
	stats, err := st.outbox.Stats(ctx)
	if err != nil {
		return 0, err
	}
	if stats.Pending != int64(total) {
		return 0, fmt.Errorf("outbox holds %d entries, want %d", stats.Pending, total)
	}
	stopProfile, err := startProfile(o.cpuProfile)
	if err != nil {
		return 0, err
	}
	meter, err := benchenv.StartCPU(ctx, st.dbURL)
	if err != nil {
		return 0, err
	}
	wallStart := time.Now()
	defer func() {
		if serr := stopProfile(); serr != nil && err == nil {
			err = serr
		}
		if o.cpuProfile != "" && err == nil {
			if _, pg, ok, merr := meter.Stop(ctx); merr == nil && ok {
				fmt.Fprintf(os.Stderr, "drain: PostgreSQL backends of the bench database used %.2f s of CPU over %.2f s\n",
					pg.Seconds(), time.Since(wallStart).Seconds())
			}
		}
	}()
	stopPublisher, err := st.startPublisher(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer stopPublisher()
	start := time.Now()
	// The relay's own count of acknowledged entries says when to look: the
	// outbox's count (a scan of the table) every few milliseconds would
	// compete with the drain for PostgreSQL. The outbox has the last word.
	for {
		if pub := st.st.Publisher(); pub != nil && pub.Counters().Published >= int64(total) {
			stats, err := st.outbox.Stats(ctx)
			if err != nil {
				return 0, err
			}
			if stats.Pending == 0 {
				break
			}
		}
		if time.Since(start) > time.Minute {
			stats, err := st.outbox.Stats(ctx)
			if err != nil {
				return 0, err
			}
			return 0, fmt.Errorf("outbox still holds %d entries", stats.Pending)
		}
		time.Sleep(time.Millisecond)
	}
	return float64(total) / time.Since(start).Seconds(), nil
}

// prefill writes backlog events (20 per user) with no publisher running.
func prefill(ctx context.Context, st *stack, prefix string, backlog int) (int, error) {
	users := testenv.Users(prefix, backlog/20)
	for range 20 {
		if err := st.writer.WriteRound(ctx, users, 500); err != nil {
			return 0, err
		}
	}
	return len(users) * 20, nil
}

// outboxOnly drains a prefilled backlog with LeaseOutbox and AckOutbox
// alone: the ceiling the outbox puts on any relay.
func outboxOnly(ctx context.Context, st *stack, o options) (float64, error) {
	total, err := prefill(ctx, st, "leaseonly", o.backlog)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	n := 0
	for n < total {
		l, err := st.outbox.Lease(ctx, outbox.LeaseRequest{Holder: "bench", MaxEntries: 500, Duration: 30 * time.Second})
		if err != nil {
			return 0, err
		}
		if len(l.Entries) == 0 {
			return 0, fmt.Errorf("outbox empty after %d of %d entries", n, total)
		}
		ids := make([]int64, len(l.Entries))
		for i, e := range l.Entries {
			ids[i] = e.GetId()
		}
		if _, err := st.outbox.Ack(ctx, l.Token, ids); err != nil {
			return 0, err
		}
		n += len(ids)
	}
	return float64(total) / time.Since(start).Seconds(), nil
}

// rawThroughput sends messages like the drain's straight to the broker
// with a sarama producer configured as the publisher's.
func rawThroughput(ctx context.Context, st *stack, o options) (float64, error) {
	const topic = "bench.raw.v1"
	kcfg := kafka.Config{
		Version:           st.cfg.KafkaVersion,
		ClientID:          "publisher-bench-raw",
		Partitions:        int32(st.cfg.TopicPartitions),
		ReplicationFactor: 1,
	}
	client, err := sarama.NewClient([]string{st.broker.Addr()}, kafka.SaramaConfig(kcfg, st.cfg.MaxMessageBytes))
	if err != nil {
		return 0, err
	}
	defer func() { _ = client.Close() }()
	if err := kafka.EnsureTopics(ctx, client, []kafka.TopicSpec{{Name: topic, Detail: sarama.TopicDetail{
		NumPartitions: kcfg.Partitions, ReplicationFactor: 1,
	}}}, st.logger); err != nil {
		return 0, err
	}
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		return 0, err
	}
	defer func() { _ = producer.Close() }()

	users := testenv.Users("raw", o.backlog/20)
	msgs := make([]*sarama.ProducerMessage, 0, o.backlog)
	now := time.Now()
	for round := range 20 {
		for _, u := range users {
			id := fmt.Sprintf("%s-%d", u, round)
			ev := &biometricsv1.BiometricEvent{
				EventId: id, UserId: u, Source: biometricsv1.Source_SOURCE_INTERNAL, Kind: "sample",
				VendorRecordId: testenv.RecordID(u, round+1), Operation: biometricsv1.Operation_OPERATION_UPSERT,
				Version: 1, OccurredAt: timestamppb.New(now), ReceivedAt: timestamppb.New(now),
				Readings: []*biometricsv1.Reading{{Metric: "heart_rate_bpm", Value: 60, Unit: "bpm", ObservedAt: timestamppb.New(now)}},
			}
			m, err := kafka.BuildMessage(ctx, &persistencev1.OutboxEntry{
				Topic: topic, Key: u, Payload: &persistencev1.OutboxEntry_Event{Event: ev}, CreatedAt: timestamppb.New(now),
			})
			if err != nil {
				return 0, err
			}
			msgs = append(msgs, m)
		}
	}
	// Two senders, like the publisher's two workers, each sending its
	// share in batches of 500.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for w := range 2 {
		wg.Go(func() {
			for i := w * 500; i < len(msgs); i += 1000 {
				if err := producer.SendMessages(msgs[i:min(i+500, len(msgs))]); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(len(msgs)) / time.Since(start).Seconds(), nil
}

// latency runs the steady-rate phases: long-polling publisher against a
// polling one.
func latency(ctx context.Context, st *stack, o options) (benchreport.Result, error) {
	longPoll, err := steady(ctx, st, nil, "longpoll", o)
	if err != nil {
		return benchreport.Result{}, fmt.Errorf("steady phase: %w", err)
	}
	polling, err := steady(ctx, st, func(c *server.Config) {
		c.WaitTimeout = 0
		c.PollInterval = 100 * time.Millisecond
	}, "polling", o)
	if err != nil {
		return benchreport.Result{}, fmt.Errorf("polling baseline phase: %w", err)
	}
	return benchreport.Lower("publisher.commit_to_publish_p99_ms", "ms", longPoll.p99, polling.p99, fmt.Sprintf(
		"p50 %.1f ms (baseline p50 %.1f ms); %d events at %.0f events/s over %s across %d users, from the moment WriteEvents "+
			"acknowledged the commit to the event's arrival at a sarama consumer; the publisher long-polls LeaseOutbox (woken by commits). "+
			"Baseline: the same publisher polling the outbox every 100 ms (wait_timeout 0), a typical polling relay",
		longPoll.p50, polling.p50, longPoll.n, longPoll.rate, o.duration, o.users)), nil
}

// startProfile starts a CPU profile into path (nothing when path is
// empty); the returned function stops it.
func startProfile(path string) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}

func firstSet(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
