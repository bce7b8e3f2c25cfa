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
// topics refused for their size.
func TopicSpecs(cfg Config) []TopicSpec {
	detail := func(configs map[string]*string) sarama.TopicDetail {
		return sarama.TopicDetail{
			NumPartitions:     cfg.Partitions,
			ReplicationFactor: cfg.ReplicationFactor,
			ConfigEntries:     configs,
		}
	}
	dlqMax := strconv.Itoa(cfg.DeadLetterMaxMessageBytes + recordBatchOverhead)
	return []TopicSpec{
		{Name: TopicEvents, Detail: detail(nil)},
		{Name: TopicConnections, Detail: detail(nil)},
		{Name: TopicDeadLetters, Detail: detail(map[string]*string{"max.message.bytes": &dlqMax})},
	}
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
