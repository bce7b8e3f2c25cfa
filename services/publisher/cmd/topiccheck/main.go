// Command topiccheck compares what PostgreSQL committed with what reached
// Kafka, and reports events lost, duplicated and reordered (see package
// topiccheck for the definitions). It only reads: the persistence database
// (events and outbox) and the event and dead-letter topics.
//
//	topiccheck -postgres postgres://... -brokers host:9092 [-since 24h]
//
// It exits 0 when nothing was lost, reordered or harmfully duplicated, 1
// when something was, and 2 when it could not check. Run it on a quiet
// system (or accept that events written during the run show as pending or
// lost): it reads the topic up to its end at the start of the read.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"

	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/topiccheck"
)

// errFound is the exit-1 outcome: the check ran and found problems.
var errFound = errors.New("topiccheck found lost, reordered or harmfully duplicated events")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout)
	stop()
	switch {
	case errors.Is(err, errFound):
		os.Exit(1)
	case err != nil:
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stdout)
	pgURL := fs.String("postgres", getenv("POSTGRES_URL"), "persistence database URL (default $POSTGRES_URL)")
	brokers := fs.String("brokers", getenv("KAFKA_BROKERS"), "comma-separated brokers (default $KAFKA_BROKERS)")
	topic := fs.String("topic", kafka.TopicEvents, "event topic to check")
	dlq := fs.String("dlq", kafka.TopicDeadLetters, "dead-letter topic (events there count as dead-lettered, not lost); empty to skip")
	since := fs.Duration("since", 0, "only events received in this window (0: all); keep it inside the topic's retention")
	version := fs.String("kafka-version", "3.6.0", "oldest broker version")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *pgURL == "" || *brokers == "" {
		return errors.New("-postgres and -brokers are required")
	}
	kv, err := sarama.ParseKafkaVersion(*version)
	if err != nil {
		return fmt.Errorf("-kafka-version: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	var from time.Time
	if *since > 0 {
		from = time.Now().Add(-*since)
	}
	rep, err := topiccheck.Run(ctx, topiccheck.Options{
		PostgresURL: *pgURL, Brokers: strings.Split(*brokers, ","), KafkaVersion: kv,
		Topic: *topic, DeadLetterTopic: *dlq, Since: from,
	})
	if err != nil {
		return err
	}
	if err := rep.Write(stdout); err != nil {
		return err
	}
	if !rep.OK() {
		return errFound
	}
	return nil
}
