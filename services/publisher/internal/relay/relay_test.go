package relay_test

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/services/publisher/internal/relay"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/outbox"
	"github.com/biobridge/bridge/services/publisher/testenv"
)

// connectKafka connects the way the publisher does, with Kafka calls
// bounded by sendTimeout (0: the default): a relay with a lease of d needs
// at most d/3.
func connectKafka(t *testing.T, env *testenv.Env, sendTimeout time.Duration) *kafka.Conn {
	t.Helper()
	cfg := env.PublisherConfig()
	conn, err := kafka.Connect(t.Context(), kafka.Config{
		Brokers: cfg.KafkaBrokers, Version: cfg.KafkaVersion, ClientID: "relay-test",
		MaxMessageBytes: cfg.MaxMessageBytes, DeadLetterMaxMessageBytes: cfg.DeadLetterMaxMessageBytes,
		Partitions: int32(cfg.TopicPartitions), ReplicationFactor: int16(cfg.ReplicationFactor), CreateTopics: true,
		SendTimeout: sendTimeout,
	}, testenv.Logger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func newRelay(t *testing.T, cc grpc.ClientConnInterface, k *kafka.Conn, cfg relay.Config) *relay.Relay {
	t.Helper()
	cfg.SendBound = kafka.SendBound(k.Client.Config())
	return relay.New(cfg, relay.Deps{
		Outbox:     outbox.New(cc),
		Producer:   k.Producer,
		DeadLetter: k.DeadLetter,
		Metrics:    relay.NewMetrics(prometheus.NewRegistry()),
		Logger:     testenv.Logger(t),
		Ping:       k.Ping,
	})
}

// run runs r until the returned stop is called; stop waits for Run.
func run(t *testing.T, r *relay.Relay) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
	}()
	stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return stop
}

// TestCrashBeforeAck simulates a publisher killed after producing but
// before acknowledging: none of its acks or nacks reach the outbox, and it
// is stopped in the middle of its work. A second publisher takes the
// entries over when the leases expire: every event arrives (at least once),
// per user in order.
func TestCrashBeforeAck(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	k := connectKafka(t, env, time.Second) // its leases are 3s
	users := testenv.Users("crash", 50)
	for range 40 {
		require.NoError(t, env.Writer.WriteRound(t.Context(), users, 50))
	}
	const total = 50 * 40
	c, err := testenv.Collect([]string{env.BrokerAddr()}, kafka.TopicEvents, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	// The first publisher's acks and nacks are lost, as if it died the
	// moment Kafka accepted its messages.
	var dropped atomic.Int64
	crashing, err := grpc.NewClient(env.Persistence.Addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(grpcclient.ServiceCredentials(testenv.Token)),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if method == persistencev1.PersistenceService_AckOutbox_FullMethodName ||
				method == persistencev1.PersistenceService_NackOutbox_FullMethodName {
				dropped.Add(1)
				return status.Error(codes.Unavailable, "publisher died")
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}))
	require.NoError(t, err)
	t.Cleanup(func() { _ = crashing.Close() })
	cfg := relay.Config{Holder: "first", BatchSize: 1000, LeaseDuration: 3 * time.Second, WaitTimeout: time.Second}
	stopFirst := run(t, newRelay(t, crashing, k, cfg))
	require.Eventually(t, func() bool { return c.Distinct() > 0 }, 30*time.Second, time.Millisecond)
	stopFirst()
	require.Positive(t, dropped.Load())
	publishedByFirst := c.Distinct()

	cfg.Holder = "second"
	run(t, newRelay(t, env.Conn, k, cfg))
	require.Eventually(t, func() bool { return c.Distinct() == total }, 60*time.Second, 50*time.Millisecond, "no event lost")
	require.NoError(t, testenv.CheckOrder(c.Messages(), env.Writer.Written()))
	ob := outbox.New(env.Conn)
	require.Eventually(t, func() bool {
		st, err := ob.Stats(t.Context())
		return err == nil && st.Pending == 0
	}, 30*time.Second, 50*time.Millisecond)
	// What the first publisher got into Kafka came again: at least once.
	require.GreaterOrEqual(t, c.Duplicates(), publishedByFirst)
	t.Logf("first publisher published %d of %d before it died; %d duplicates", publishedByFirst, total, c.Duplicates())
}

// partitionOf returns the events-topic partition of user's messages.
func partitionOf(t *testing.T, k *kafka.Conn, user string) int32 {
	t.Helper()
	parts, err := k.Client.Partitions(kafka.TopicEvents)
	require.NoError(t, err)
	p, err := sarama.NewHashPartitioner(kafka.TopicEvents).Partition(
		&sarama.ProducerMessage{Key: sarama.StringEncoder(user)}, int32(len(parts)))
	require.NoError(t, err)
	return p
}

// TestTransientFaultsKeepOrder makes the broker refuse produce requests for
// a while with a retriable error that outlasts sarama's own retries: the
// relay nacks, backs off and retries, and every user's events still arrive
// complete and in order.
func TestTransientFaultsKeepOrder(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	k := connectKafka(t, env, 0)
	fault := env.Broker().Cluster().Fault(kfake.Fault{
		Keys:  []kmsg.Key{kmsg.Produce},
		Topic: kafka.TopicEvents,
		Err:   kerr.NotEnoughReplicas,
		Count: 60,
	})
	users := testenv.Users("faulty", 20)
	for range 20 {
		require.NoError(t, env.Writer.WriteRound(t.Context(), users, 20))
	}
	c, err := testenv.Collect([]string{env.BrokerAddr()}, kafka.TopicEvents, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	reg := prometheus.NewRegistry()
	cfg := relay.Config{
		BatchSize: 100, WaitTimeout: time.Second, MaxAttempts: 2,
		BackoffInitial: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		SendBound: kafka.SendBound(k.Client.Config()),
	}
	r := relay.New(cfg, relay.Deps{
		Outbox: outbox.New(env.Conn), Producer: k.Producer, DeadLetter: k.DeadLetter,
		Metrics: relay.NewMetrics(reg), Logger: testenv.Logger(t), Ping: k.Ping,
	})
	run(t, r)
	require.Eventually(t, func() bool { return c.Distinct() == 400 }, 60*time.Second, 50*time.Millisecond)
	require.NoError(t, testenv.CheckOrder(c.Messages(), env.Writer.Written()))
	require.Equal(t, 60, fault.Hits(), "every injected fault was hit")
	counters := r.Counters()
	require.Positive(t, counters.Failed, "sarama's retries alone did not absorb the faults")
	require.Zero(t, counters.DeadLettered, "transient errors are never dead-lettered, whatever the attempts")
	// The injected error is among the failures counted (the last one may
	// be a follow-up, such as the idempotent producer's epoch bump after
	// its retries ran out).
	require.Positive(t, failuresWithReason(t, reg, "not_enough_replicas"))
}

// failuresWithReason sums publisher_publish_failures_total over the
// series labelled reason.
func failuresWithReason(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "publisher_publish_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// TestUnknownErrorDeadLettersAfterMaxAttempts makes one partition fail
// every produce with an error that is neither clearly transient nor
// clearly permanent while the other partitions work: the entries of that
// partition are dead-lettered after MaxAttempts, the rest are published.
func TestUnknownErrorDeadLettersAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	k := connectKafka(t, env, 0)
	users := testenv.Users("unknown", 12)
	bad := partitionOf(t, k, users[0])
	var badUsers []string
	for _, u := range users {
		if partitionOf(t, k, u) == bad {
			badUsers = append(badUsers, u)
		}
	}
	env.Broker().Cluster().Fault(kfake.Fault{
		Keys:       []kmsg.Key{kmsg.Produce},
		Topic:      kafka.TopicEvents,
		Partitions: []int32{bad},
		Err:        kerr.UnknownServerError,
		Count:      -1,
	})
	require.NoError(t, env.Writer.WriteRound(t.Context(), users, len(users)))
	events, err := testenv.Collect([]string{env.BrokerAddr()}, kafka.TopicEvents, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = events.Close() })
	dlq, err := testenv.Collect([]string{env.BrokerAddr()}, kafka.TopicDeadLetters, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = dlq.Close() })

	r := newRelay(t, env.Conn, k, relay.Config{
		WaitTimeout: time.Second, MaxAttempts: 3,
		BackoffInitial: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	})
	run(t, r)
	require.Eventually(t, func() bool {
		return events.Distinct() == len(users)-len(badUsers) && dlq.Distinct() == len(badUsers)
	}, 30*time.Second, 50*time.Millisecond)
	for _, m := range dlq.Messages() {
		require.Contains(t, badUsers, m.Key)
		require.Equal(t, "max_attempts_exceeded", m.Headers["dlq_reason"])
		require.Equal(t, "3", m.Headers["dlq_attempts"])
		require.Contains(t, m.Headers["dlq_error"], "Unexpected")
	}
	require.EqualValues(t, len(badUsers), r.Counters().DeadLettered)
}

// TestFollowerBehindRetriedHeadKeepsItsAttempts: a user's first event is
// refused (transiently) many times while the user's second event is leased
// along with it every time but never sent. Once the first gets through,
// the second fails once with an unrecognized error: that is its first
// publish attempt, so it is retried and published in order, not
// dead-lettered as if every lease behind the head had been an attempt
// (which would let the third event overtake it).
func TestFollowerBehindRetriedHeadKeepsItsAttempts(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	k := connectKafka(t, env, time.Second) // its lease is 3s
	user := "follower-user"
	var ids []string
	for range 3 {
		got, err := env.Writer.Write(t.Context(), []*persistencev1.EventInput{env.Writer.Event(user, 1)})
		require.NoError(t, err)
		ids = append(ids, got[0])
	}
	cluster := env.Broker().Cluster()
	slowHead := cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: kafka.TopicEvents,
		Err: kerr.NotEnoughReplicas, Count: -1, When: carries(ids[0])})
	cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: kafka.TopicEvents,
		Err: kerr.UnknownServerError, Count: 1, When: carries(ids[1])})
	events, err := testenv.Collect([]string{env.BrokerAddr()}, kafka.TopicEvents, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = events.Close() })
	dlq, err := testenv.Collect([]string{env.BrokerAddr()}, kafka.TopicDeadLetters, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = dlq.Close() })

	r := newRelay(t, env.Conn, k, relay.Config{
		BatchSize: 10, WaitTimeout: time.Second, LeaseDuration: 3 * time.Second, MaxAttempts: 3,
		BackoffInitial: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	})
	run(t, r)
	// Six failed sends of the head (sarama tries each three times): its
	// followers were leased with it six times.
	require.Eventually(t, func() bool { return slowHead.Hits() >= 18 }, 60*time.Second, 10*time.Millisecond)
	slowHead.Remove()
	require.Eventually(t, func() bool { return events.Distinct() == 3 }, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, testenv.CheckOrder(events.Messages(), map[string]int{user: 3}))
	require.Zero(t, dlq.Distinct(), "the follower's one failure is not its MaxAttempts-th")
	require.Positive(t, r.Counters().Failed)
}

// TestRunPublishedInPartsAndAcrossAFailure: a write of one user's events
// is one outbox row (a run) that leases hand out in parts smaller than the
// run. A send in the middle of the run fails: the events before it were
// acknowledged, so the retry starts at the failed one. Every event arrives
// once, in order.
func TestRunPublishedInPartsAndAcrossAFailure(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	k := connectKafka(t, env, time.Second) // its lease is 3s
	user := "run-user"
	events := make([]*persistencev1.EventInput, 30)
	for i := range events {
		events[i] = env.Writer.Event(user, 1)
	}
	ids, err := env.Writer.Write(t.Context(), events)
	require.NoError(t, err)
	// Sarama tries a message three times: one failed send of event 11.
	fault := env.Broker().Cluster().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: kafka.TopicEvents,
		Err: kerr.NotEnoughReplicas, Count: 3, When: carries(ids[10])})
	c, err := testenv.Collect([]string{env.BrokerAddr()}, kafka.TopicEvents, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	r := newRelay(t, env.Conn, k, relay.Config{
		BatchSize: 8, WaitTimeout: time.Second, LeaseDuration: 3 * time.Second,
		BackoffInitial: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	})
	run(t, r)
	require.Eventually(t, func() bool { return c.Distinct() == 30 }, 60*time.Second, 10*time.Millisecond)
	require.NoError(t, testenv.CheckOrder(c.Messages(), map[string]int{user: 30}))
	require.Equal(t, 3, fault.Hits())
	require.Positive(t, r.Counters().Failed)
	require.Zero(t, c.Duplicates(), "the events published before the failure were not sent again")
	ob := outbox.New(env.Conn)
	require.Eventually(t, func() bool {
		st, err := ob.Stats(t.Context())
		return err == nil && st.Pending == 0
	}, 30*time.Second, 50*time.Millisecond)
}

// carries matches produce requests whose records contain id (a fault's
// When: fail only the sends of one event).
func carries(id string) func(kmsg.Request) bool {
	return func(req kmsg.Request) bool {
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			for _, p := range tp.Partitions {
				if bytes.Contains(p.Records, []byte(id)) {
					return true
				}
			}
		}
		return false
	}
}
