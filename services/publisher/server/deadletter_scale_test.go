package server_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	publisherv1 "github.com/biobridge/bridge/gen/go/biobridge/publisher/v1"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/testenv"
)

// Heap bounds of TestDeadLettersAtScale (the publisher process's
// go_memstats_heap_inuse_bytes and go_memstats_sys_bytes): the topic holds
// 2,000 MiB of letters, so a publisher that held it, or one partition of
// it, in memory could not stay under them.
const (
	scaleLetters     = 2000
	scaleLetterBytes = 1 << 20
	maxHeapInuse     = 64 << 20
	maxSys           = 128 << 20
)

// heapSampler polls a process's /metrics and keeps the largest heap seen.
type heapSampler struct {
	stop      context.CancelFunc
	wg        sync.WaitGroup
	mu        sync.Mutex
	heap, sys float64
	samples   int
}

func sampleHeap(t *testing.T, adminAddr string) *heapSampler {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	h := &heapSampler{stop: cancel}
	h.wg.Go(func() {
		for ctx.Err() == nil {
			heap, sys, err := scrapeMemstats(ctx, adminAddr)
			if err == nil {
				h.mu.Lock()
				h.heap, h.sys, h.samples = max(h.heap, heap), max(h.sys, sys), h.samples+1
				h.mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	t.Cleanup(h.Stop)
	return h
}

func (h *heapSampler) Stop() {
	h.stop()
	h.wg.Wait()
}

func (h *heapSampler) Max() (heap, sys float64, samples int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.heap, h.sys, h.samples
}

func scrapeMemstats(ctx context.Context, adminAddr string) (heap, sys float64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+adminAddr+"/metrics", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		switch name {
		case "go_memstats_heap_inuse_bytes":
			heap, _ = strconv.ParseFloat(value, 64)
		case "go_memstats_sys_bytes":
			sys, _ = strconv.ParseFloat(value, 64)
		}
	}
	return heap, sys, sc.Err()
}

// TestDeadLettersAtScale puts 2,000 dead letters of 1 MiB each on the
// dead-letter topic, runs the real publisher binary, pages through all of
// them with ListDeadLetters, replays a range of them and counts them in
// GetStatus, and measures the publisher's heap throughout.
func TestDeadLettersAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 2 GiB to the embedded broker")
	}
	env := testenv.New(t, testenv.Options{InMemoryBroker: true, BrokerConfigs: map[string]string{"message.max.bytes": strconv.Itoa(16 << 20)}})
	env.EnsureTopics()
	produceDeadLetters(t, env, scaleLetters, scaleLetterBytes)

	p := env.StartProcess(env.ProcessEnv(map[string]string{"KAFKA_MAX_MESSAGE_BYTES": strconv.Itoa(2 << 20)}))
	h := sampleHeap(t, p.AdminAddr)
	conn, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	client := publisherv1.NewPublisherServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+testenv.Token)

	start := time.Now()
	var letters []*publisherv1.DeadLetter
	token, pages := "", 0
	for {
		resp, err := client.ListDeadLetters(ctx, &publisherv1.ListDeadLettersRequest{PageSize: 100, PageToken: token})
		require.NoError(t, err)
		require.LessOrEqual(t, len(resp.GetDeadLetters()), 100)
		letters = append(letters, resp.GetDeadLetters()...)
		pages++
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	t.Logf("listed %d dead letters in %d pages in %s", len(letters), pages, time.Since(start).Round(time.Millisecond))
	require.Len(t, letters, scaleLetters)
	ids := map[string]bool{}
	for _, l := range letters {
		ids[l.GetEventId()] = true
		require.GreaterOrEqual(t, l.GetSizeBytes(), int32(scaleLetterBytes))
	}
	require.Len(t, ids, scaleLetters, "every letter once")

	// Replay a range: the first 100 letters of the first partition.
	first := letters[0].GetPartition()
	var inRange []*publisherv1.DeadLetter
	for _, l := range letters {
		if l.GetPartition() == first && len(inRange) < 100 {
			inRange = append(inRange, l)
		}
	}
	start = time.Now()
	replay, err := client.ReplayDeadLetters(ctx, &publisherv1.ReplayDeadLettersRequest{Ranges: []*publisherv1.DeadLetterRange{{
		Partition: first, FromOffset: inRange[0].GetOffset(), ToOffset: inRange[len(inRange)-1].GetOffset(),
	}}})
	require.NoError(t, err)
	t.Logf("replayed %d letters (%d MiB) in %s", replay.GetReplayed(), replay.GetReplayed(), time.Since(start).Round(time.Millisecond))
	require.EqualValues(t, len(inRange), replay.GetReplayed())
	require.Zero(t, replay.GetFailed())

	st, err := client.GetStatus(ctx, &publisherv1.GetStatusRequest{})
	require.NoError(t, err)
	require.EqualValues(t, scaleLetters-len(inRange), st.GetDeadLetters())

	h.Stop()
	heap, sys, samples := h.Max()
	t.Logf("publisher memory over %d samples: max heap in use %.1f MiB (bound %d MiB), max sys %.1f MiB (bound %d MiB)",
		samples, heap/(1<<20), maxHeapInuse>>20, sys/(1<<20), maxSys>>20)
	require.Greater(t, samples, 10)
	require.Less(t, heap, float64(maxHeapInuse))
	require.Less(t, sys, float64(maxSys))
}

// produceDeadLetters writes n dead letters of size bytes each, for as many
// users, in the layout the relay writes.
func produceDeadLetters(t *testing.T, env *testenv.Env, n, size int) {
	t.Helper()
	cfg := kafka.SaramaConfig(kafka.Config{Version: sarama.V3_6_0_0, ClientID: "letters"}, 2*size)
	cfg.Producer.Idempotent, cfg.Net.MaxOpenRequests = false, 5
	producer, err := sarama.NewSyncProducer([]string{env.BrokerAddr()}, cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, producer.Close()) }()
	value := make([]byte, size)
	start := time.Now()
	const batch = 16
	for i := 0; i < n; i += batch {
		var msgs []*sarama.ProducerMessage
		for j := i; j < min(i+batch, n); j++ {
			id := fmt.Sprintf("letter-%05d", j)
			orig := &sarama.ProducerMessage{
				Topic: kafka.TopicEvents, Key: sarama.StringEncoder(fmt.Sprintf("user-%d", j)), Value: sarama.ByteEncoder(value),
				Headers: []sarama.RecordHeader{{Key: []byte(kafka.HeaderID), Value: []byte(id)}},
			}
			msgs = append(msgs, kafka.DeadLetter(orig, kafka.DeadLetterInfo{Reason: "message_too_large", Error: "test", Attempts: 1, FailedAt: time.Now()}))
		}
		require.NoError(t, producer.SendMessages(msgs))
	}
	t.Logf("wrote %d dead letters of %d KiB in %s", n, size>>10, time.Since(start).Round(time.Millisecond))
}
