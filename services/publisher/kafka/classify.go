package kafka

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"

	"github.com/IBM/sarama"
	"github.com/eapache/go-resiliency/breaker"
)

// Class is what the publisher does about a failed produce.
type Class int

const (
	// Transient failures are about the brokers, not the message (broker
	// unreachable, leader moving, timeouts, producer state): retry with
	// backoff forever; the outbox holds the backlog meanwhile.
	Transient Class = iota + 1
	// Permanent failures are about the message (too large, invalid):
	// retrying cannot help, so it goes to the dead-letter topic.
	Permanent
	// Unknown failures are retried until the attempt limit, then
	// dead-lettered.
	Unknown
)

func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case Permanent:
		return "permanent"
	default:
		return "unknown"
	}
}

// Failure is a classified produce error.
type Failure struct {
	Class Class
	// Reason is a stable snake_case name, used as metric label and
	// dead-letter reason.
	Reason string
	// Shared is true when the broker rejects a whole partition batch, so
	// the error may belong to another message in the same batch: the
	// publisher confirms it by sending the message alone.
	Shared bool
}

// Classify maps a produce error to a Failure.
func Classify(err error) Failure {
	var kerr sarama.KError
	if errors.As(err, &kerr) {
		return classifyKError(kerr)
	}
	var cerr sarama.ConfigurationError
	if errors.As(err, &cerr) && strings.Contains(string(cerr), "MaxMessageBytes") {
		// sarama refused the message locally, before sending it.
		return Failure{Class: Permanent, Reason: "message_too_large"}
	}
	var perr sarama.PacketEncodingError
	if errors.As(err, &perr) {
		return Failure{Class: Permanent, Reason: "encoding_error"}
	}
	if errors.Is(err, ErrInvalidEntry) {
		return Failure{Class: Permanent, Reason: "invalid_entry"}
	}
	var nerr net.Error
	switch {
	case errors.Is(err, sarama.ErrOutOfBrokers), errors.Is(err, sarama.ErrNotConnected),
		// sarama stops looking up a partition's leader for a while after
		// repeated failures: the brokers are away.
		errors.Is(err, breaker.ErrBreakerOpen),
		errors.Is(err, sarama.ErrBrokerNotFound), errors.Is(err, sarama.ErrControllerNotAvailable),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.As(err, &nerr):
		return Failure{Class: Transient, Reason: "broker_unavailable"}
	case errors.Is(err, sarama.ErrIncompleteResponse):
		return Failure{Class: Transient, Reason: "incomplete_response"}
	case errors.Is(err, sarama.ErrShuttingDown), errors.Is(err, sarama.ErrClosedClient),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Failure{Class: Transient, Reason: "shutting_down"}
	}
	return Failure{Class: Unknown, Reason: "unknown"}
}

func classifyKError(k sarama.KError) Failure {
	switch k {
	case sarama.ErrMessageSizeTooLarge:
		return Failure{Class: Permanent, Reason: "message_too_large", Shared: true}
	case sarama.ErrMessageSetSizeTooLarge:
		return Failure{Class: Permanent, Reason: "record_list_too_large", Shared: true}
	case sarama.ErrInvalidRecord:
		return Failure{Class: Permanent, Reason: "invalid_record", Shared: true}
	case sarama.ErrInvalidTimestamp:
		return Failure{Class: Permanent, Reason: "invalid_timestamp", Shared: true}
	case sarama.ErrLeaderNotAvailable, sarama.ErrNotLeaderForPartition, sarama.ErrReplicaNotAvailable,
		sarama.ErrFencedLeaderEpoch, sarama.ErrUnknownLeaderEpoch, sarama.ErrUnknownTopicOrPartition:
		return Failure{Class: Transient, Reason: "leader_unavailable"}
	case sarama.ErrRequestTimedOut:
		return Failure{Class: Transient, Reason: "timeout"}
	case sarama.ErrNotEnoughReplicas, sarama.ErrNotEnoughReplicasAfterAppend, sarama.ErrKafkaStorageError:
		return Failure{Class: Transient, Reason: "not_enough_replicas"}
	case sarama.ErrNetworkException, sarama.ErrBrokerNotAvailable, sarama.ErrNotController:
		return Failure{Class: Transient, Reason: "broker_unavailable"}
	case sarama.ErrThrottlingQuotaExceeded, sarama.ErrPolicyViolation:
		return Failure{Class: Transient, Reason: "throttled"}
	case sarama.ErrOutOfOrderSequenceNumber, sarama.ErrUnknownProducerID, sarama.ErrInvalidProducerEpoch,
		sarama.ErrProducerFenced, sarama.ErrInvalidProducerIDMapping, sarama.ErrConcurrentTransactions:
		// Producer state, not the message: sarama bumps the epoch and the
		// next attempt starts a fresh sequence.
		return Failure{Class: Transient, Reason: "producer_state"}
	case sarama.ErrTopicAuthorizationFailed, sarama.ErrClusterAuthorizationFailed, sarama.ErrSASLAuthenticationFailed:
		// An operator fixes ACLs; dead-lettering all traffic meanwhile
		// would turn a configuration problem into a replay job.
		return Failure{Class: Transient, Reason: "not_authorized"}
	}
	// The code keeps the label set bounded (Kafka has about a hundred).
	return Failure{Class: Unknown, Reason: "kafka_error_" + strconv.Itoa(int(k))}
}
