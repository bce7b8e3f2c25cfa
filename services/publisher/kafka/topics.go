package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/IBM/sarama"
)

// TopicSpec describes a topic to create when missing.
type TopicSpec struct {
	Name   string
	Detail sarama.TopicDetail
}

// TopicSpecs returns the publisher's topics: the two event topics and the
// dead-letter topic, whose max.message.bytes admits messages the event
// topics refused for their size and which keeps its letters until they are
// dealt with (retention.ms=-1: their outbox rows are gone, the letter is
// the only copy). Every topic gets the configured min.insync.replicas
// rather than the broker's default (1 unless changed), under which acks=all
// is satisfied by the leader alone and losing it loses acknowledged events.
func TopicSpecs(cfg Config) []TopicSpec {
	minISR := strconv.Itoa(max(cfg.MinInsyncReplicas, 1))
	detail := func(configs map[string]*string) sarama.TopicDetail {
		configs[ConfigMinInsyncReplicas] = &minISR
		return sarama.TopicDetail{
			NumPartitions:     cfg.Partitions,
			ReplicationFactor: cfg.ReplicationFactor,
			ConfigEntries:     configs,
		}
	}
	dlqMax := strconv.Itoa(cfg.DeadLetterMaxMessageBytes + recordBatchOverhead)
	forever := "-1"
	return []TopicSpec{
		{Name: TopicEvents, Detail: detail(map[string]*string{})},
		{Name: TopicConnections, Detail: detail(map[string]*string{})},
		{Name: TopicDeadLetters, Detail: detail(map[string]*string{"max.message.bytes": &dlqMax, ConfigRetentionMs: &forever})},
	}
}

// Topic configuration names the publisher sets and checks.
const (
	ConfigMinInsyncReplicas = "min.insync.replicas"
	ConfigRetentionMs       = "retention.ms"
)

// TopicProblem is a topic whose durability is below what is configured.
type TopicProblem struct {
	Topic   string
	Setting string // "replication_factor", "min.insync.replicas", "retention.ms" or "exists"
	Have    string
	Want    string
}

func (p TopicProblem) String() string {
	return fmt.Sprintf("topic %s: %s is %s, want %s", p.Topic, p.Setting, p.Have, p.Want)
}

// CheckTopics describes the publisher's topics and returns every setting
// below what cfg asks for: a partition with fewer replicas than the
// replication factor, a min.insync.replicas (the topic's own or the
// broker default it inherits) below the configured one, a dead-letter topic
// that expires letters, a topic that does not exist.
func CheckTopics(client sarama.Client, cfg Config) ([]TopicProblem, error) {
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return nil, fmt.Errorf("kafka admin: %w", err)
	}
	// Closing an admin built from a client would close the client too.
	specs := TopicSpecs(cfg)
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	metas, err := admin.DescribeTopics(names)
	if err != nil {
		return nil, fmt.Errorf("describe kafka topics: %w", err)
	}
	var problems []TopicProblem
	for _, m := range metas {
		if errors.Is(m.Err, sarama.ErrUnknownTopicOrPartition) {
			problems = append(problems, TopicProblem{Topic: m.Name, Setting: "exists", Have: "no", Want: "yes"})
			continue
		}
		if m.Err != sarama.ErrNoError {
			return nil, fmt.Errorf("describe kafka topic %s: %w", m.Name, m.Err)
		}
		fewest := -1
		for _, p := range m.Partitions {
			if n := len(p.Replicas); fewest < 0 || n < fewest {
				fewest = n
			}
		}
		if fewest >= 0 && fewest < int(cfg.ReplicationFactor) {
			problems = append(problems, TopicProblem{Topic: m.Name, Setting: "replication_factor",
				Have: strconv.Itoa(fewest), Want: strconv.Itoa(int(cfg.ReplicationFactor))})
		}
		entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: m.Name,
			ConfigNames: []string{ConfigMinInsyncReplicas, ConfigRetentionMs}})
		if err != nil {
			return nil, fmt.Errorf("describe kafka topic %s config: %w", m.Name, err)
		}
		for _, e := range entries {
			switch e.Name {
			case ConfigMinInsyncReplicas:
				if n, err := strconv.Atoi(e.Value); err != nil || n < cfg.MinInsyncReplicas {
					problems = append(problems, TopicProblem{Topic: m.Name, Setting: ConfigMinInsyncReplicas,
						Have: e.Value, Want: "at least " + strconv.Itoa(cfg.MinInsyncReplicas)})
				}
			case ConfigRetentionMs:
				if m.Name == TopicDeadLetters && e.Value != "-1" {
					problems = append(problems, TopicProblem{Topic: m.Name, Setting: ConfigRetentionMs,
						Have: e.Value, Want: "-1 (dead letters are the only copy once their outbox rows are gone)"})
				}
			}
		}
	}
	return problems, nil
}

// recordBatchOverhead is headroom for the record batch framing around the
// largest dead letter (a batch header is 61 bytes; headers add more).
const recordBatchOverhead = 64 << 10

// EnsureTopics creates the topics of specs that do not exist yet. Existing
// topics are left as they are (their partition count is an operator
// decision once data flows); a topic created concurrently by another
// publisher replica counts as existing.
func EnsureTopics(ctx context.Context, client sarama.Client, specs []TopicSpec, logger *slog.Logger) error {
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return fmt.Errorf("kafka admin: %w", err)
	}
	// Closing an admin built from a client would close the client too.
	existing, err := admin.ListTopics()
	if err != nil {
		return fmt.Errorf("list kafka topics: %w", err)
	}
	for _, spec := range specs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, ok := existing[spec.Name]; ok {
			continue
		}
		detail := spec.Detail
		err := admin.CreateTopic(spec.Name, &detail, false)
		var te *sarama.TopicError
		switch {
		case err == nil:
			logger.Info("created kafka topic", "topic", spec.Name,
				"partitions", detail.NumPartitions, "replication_factor", detail.ReplicationFactor)
		case errors.As(err, &te) && te.Err == sarama.ErrTopicAlreadyExists:
		default:
			return fmt.Errorf("create kafka topic %s: %w", spec.Name, err)
		}
	}
	// Producers look partitions up in the metadata; refresh it now so the
	// first batch does not race the new topics' leader election.
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	if err := client.RefreshMetadata(names...); err != nil {
		return fmt.Errorf("refresh kafka metadata: %w", err)
	}
	return nil
}
