// Package testenv starts what the publisher's integration tests and its
// benchmark need (an embedded Kafka broker; for the tests, the real
// persistence service as a child process on a fresh database) and checks
// what arrives on the topics.
package testenv

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"google.golang.org/protobuf/proto"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/services/publisher/kafka"
)

// Received is one consumed message.
type Received struct {
	EventID   string
	Key       string
	Partition int32
	Offset    int64
	Headers   map[string]string
	Event     *biometricsv1.BiometricEvent
	At        time.Time
}

// Collector consumes every partition of a topic from the oldest offset.
type Collector struct {
	client   sarama.Client
	consumer sarama.Consumer
	pcs      []sarama.PartitionConsumer
	wg       sync.WaitGroup

	mu       sync.Mutex
	all      []Received
	distinct map[string]int
	onFirst  func(Received)
	errs     []error
}

// Collect starts consuming topic on brokers. onFirst, if not nil, is called
// for the first copy of every event id.
func Collect(brokers []string, topic string, onFirst func(Received)) (*Collector, error) {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	cfg.Consumer.Return.Errors = true
	cfg.Consumer.MaxWaitTime = 50 * time.Millisecond
	cfg.Metadata.Retry.Max = 10
	cfg.Metadata.Retry.Backoff = 200 * time.Millisecond
	client, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		return nil, fmt.Errorf("collector client: %w", err)
	}
	c := &Collector{client: client, distinct: map[string]int{}, onFirst: onFirst}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("collector consumer: %w", err)
	}
	c.consumer = consumer
	parts, err := client.Partitions(topic)
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("collector partitions: %w", err)
	}
	for _, p := range parts {
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("collector partition %d: %w", p, err)
		}
		c.pcs = append(c.pcs, pc)
		c.wg.Go(func() { c.read(pc) })
	}
	return c, nil
}

func (c *Collector) read(pc sarama.PartitionConsumer) {
	msgs, errs := pc.Messages(), pc.Errors()
	for msgs != nil || errs != nil {
		select {
		case m, ok := <-msgs:
			if !ok {
				msgs = nil
				continue
			}
			c.add(m)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// Errors during a broker outage are expected: the partition
			// consumer keeps retrying on its own.
			c.mu.Lock()
			c.errs = append(c.errs, err)
			c.mu.Unlock()
		}
	}
}

func (c *Collector) add(m *sarama.ConsumerMessage) {
	r := Received{Key: string(m.Key), Partition: m.Partition, Offset: m.Offset, Headers: map[string]string{}, At: time.Now()}
	for _, h := range m.Headers {
		r.Headers[string(h.Key)] = string(h.Value)
	}
	r.EventID = r.Headers[kafka.HeaderID]
	ev := &biometricsv1.BiometricEvent{}
	if proto.Unmarshal(m.Value, ev) == nil {
		r.Event = ev
	}
	c.mu.Lock()
	c.all = append(c.all, r)
	c.distinct[r.EventID]++
	first := c.distinct[r.EventID] == 1
	onFirst := c.onFirst
	c.mu.Unlock()
	if first && onFirst != nil {
		onFirst(r)
	}
}

// Distinct is the number of distinct event ids received.
func (c *Collector) Distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.distinct)
}

// Total is the number of messages received, duplicates included.
func (c *Collector) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.all)
}

// Messages returns a copy of everything received, in arrival order.
func (c *Collector) Messages() []Received {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Received(nil), c.all...)
}

// Duplicates is the number of messages that repeated an event id.
func (c *Collector) Duplicates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.all) - len(c.distinct)
}

// Progress describes, for a failure message, how far each partition was
// consumed against the broker's newest offset, and the consumer errors seen.
func (c *Collector) Progress(topic string) string {
	c.mu.Lock()
	next := map[int32]int64{}
	for _, m := range c.all {
		next[m.Partition] = max(next[m.Partition], m.Offset+1)
	}
	errs := append([]error(nil), c.errs...)
	c.mu.Unlock()
	var b strings.Builder
	parts, err := c.client.Partitions(topic)
	if err != nil {
		fmt.Fprintf(&b, "partitions: %v; ", err)
	}
	for _, p := range parts {
		newest, err := c.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			fmt.Fprintf(&b, "partition %d: consumed to %d, newest offset: %v; ", p, next[p], err)
			continue
		}
		fmt.Fprintf(&b, "partition %d: consumed to %d of %d; ", p, next[p], newest)
	}
	fmt.Fprintf(&b, "%d consumer errors", len(errs))
	if len(errs) > 0 {
		fmt.Fprintf(&b, " (last: %v)", errs[len(errs)-1])
	}
	return b.String()
}

// Close stops consuming.
func (c *Collector) Close() error {
	for _, pc := range c.pcs {
		pc.AsyncClose()
	}
	c.wg.Wait()
	if c.consumer != nil {
		_ = c.consumer.Close()
	}
	return c.client.Close()
}

// RecordID is the vendor record id the writers use: user and sequence, so
// the consumer side can tell each user's commit order.
func RecordID(user string, seq int) string {
	return fmt.Sprintf("%s/%06d", user, seq)
}

// parseRecordID splits a RecordID.
func parseRecordID(id string) (user string, seq int, ok bool) {
	i := strings.LastIndexByte(id, '/')
	if i < 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(id[i+1:])
	return id[:i], n, err == nil
}

// CheckOrder verifies per-user order: for every key, the first copies of
// its events appear in write order with no gaps (sequence 1, 2, 3, ...), so
// no event was published before its predecessor. Duplicates (re-sends
// after a failure) may appear anywhere after their first copy. It also
// checks that every message's key is its event's user and that wantPerUser
// events arrived per user when wantPerUser > 0.
func CheckOrder(msgs []Received, wantPerUser map[string]int) error {
	next := map[string]int{}
	seen := map[string]bool{}
	for _, m := range msgs {
		if m.Event == nil {
			return fmt.Errorf("offset %d/%d: value is not a BiometricEvent", m.Partition, m.Offset)
		}
		if m.Event.GetUserId() != m.Key {
			return fmt.Errorf("event %s: key %q is not its user", m.EventID, m.Key)
		}
		if m.EventID != m.Event.GetEventId() {
			return fmt.Errorf("event %s: ce_id %q does not match the event id", m.Event.GetEventId(), m.EventID)
		}
		if seen[m.EventID] {
			continue
		}
		seen[m.EventID] = true
		user, seq, ok := parseRecordID(m.Event.GetVendorRecordId())
		if !ok || user != m.Key {
			return fmt.Errorf("event %s: unexpected record id %q", m.EventID, m.Event.GetVendorRecordId())
		}
		if want := next[user] + 1; seq != want {
			return fmt.Errorf("user %s: event #%d arrived when #%d was next (partition %d offset %d)", user, seq, want, m.Partition, m.Offset)
		}
		next[user] = seq
	}
	for user, want := range wantPerUser {
		if next[user] != want {
			return fmt.Errorf("user %s: %d events arrived, want %d", user, next[user], want)
		}
	}
	return nil
}

// WaitDistinct waits until n distinct events arrived or ctx ends.
func (c *Collector) WaitDistinct(ctx context.Context, n int) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for c.Distinct() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d events arrived: %w", c.Distinct(), n, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}
