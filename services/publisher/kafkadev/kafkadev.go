// Package kafkadev runs an embedded Kafka-protocol broker (franz-go's kfake)
// for development and tests, so devstack and the publisher's tests speak the
// real Kafka wire protocol over TCP without a JVM.
//
// The broker advertises the address it listens on, so clients that follow
// metadata (every Kafka client does) reconnect to that same address: listen
// on a concrete loopback host such as 127.0.0.1:9092, never on a wildcard.
// With a data directory the broker keeps its topics, offsets and producer
// state on disk, so closing it and starting it again on the same address and
// directory is a broker restart, not a wiped cluster.
package kafkadev

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Config configures Start.
type Config struct {
	// Addr is host:port to listen on, for example "127.0.0.1:9092"
	// (devstack) or "127.0.0.1:0" (tests). An empty host means 127.0.0.1.
	Addr string
	// DataDir persists the broker's state; empty keeps everything in memory.
	DataDir string
	// BrokerConfigs sets broker-level configs such as "message.max.bytes".
	BrokerConfigs map[string]string
	// Logger receives the broker's warnings and errors; nil discards them.
	Logger *slog.Logger
	// Advertise, when set, is the host:port the broker tells clients to
	// connect to instead of its own listener: a proxy in front of it, for
	// tests that put faults on the wire.
	Advertise string
}

// Broker is a running embedded broker.
type Broker struct {
	cluster *kfake.Cluster
	addr    string
	stop    func() bool
	once    sync.Once
}

// Start runs a single embedded broker on addr, persisting to dataDir when it
// is not empty. The broker stops when ctx is done or Close is called.
func Start(ctx context.Context, addr, dataDir string) (*Broker, error) {
	return StartConfig(ctx, Config{Addr: addr, DataDir: dataDir})
}

// StartConfig is Start with every option.
func StartConfig(ctx context.Context, cfg Config) (*Broker, error) {
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("kafkadev: address %q: %w", cfg.Addr, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		// kfake advertises its listener's address; a wildcard would send
		// clients to 0.0.0.0 after their first metadata request.
		return nil, fmt.Errorf("kafkadev: address %q: listen on a concrete host (the broker advertises it), e.g. 127.0.0.1", cfg.Addr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("kafkadev: address %q: invalid port", cfg.Addr)
	}
	listenAddr := net.JoinHostPort(host, portStr)
	var realAddr string // the listener's own address when it advertises another

	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(port),
		// kfake always asks for 127.0.0.1:<port>; listen on the host we
		// were given instead so "localhost" or another loopback IP works.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen(network, listenAddr)
			if err != nil || cfg.Advertise == "" {
				return ln, err
			}
			adv, err := net.ResolveTCPAddr("tcp", cfg.Advertise)
			if err != nil {
				_ = ln.Close()
				return nil, fmt.Errorf("advertise %q: %w", cfg.Advertise, err)
			}
			realAddr = ln.Addr().String()
			return advertised{Listener: ln, addr: adv}, nil
		}),
		kfake.ClusterID("biobridge-dev"),
		kfake.WithLogger(slogAdapter{logger: cfg.Logger}),
	}
	if cfg.DataDir != "" {
		opts = append(opts, kfake.DataDir(cfg.DataDir))
	}
	if len(cfg.BrokerConfigs) > 0 {
		opts = append(opts, kfake.BrokerConfigs(cfg.BrokerConfigs))
	}
	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafkadev: start broker on %s: %w", listenAddr, err)
	}
	addrs := cluster.ListenAddrs()
	if len(addrs) != 1 {
		cluster.Close()
		return nil, errors.New("kafkadev: broker did not report its listen address")
	}
	b := &Broker{cluster: cluster, addr: addrs[0]}
	if realAddr != "" {
		b.addr = realAddr
	}
	// The AfterFunc goroutine only calls shutdown, never reads b.stop.
	b.stop = context.AfterFunc(ctx, b.shutdown)
	return b, nil
}

// advertised is a listener that reports another address, which kfake then
// advertises in its metadata.
type advertised struct {
	net.Listener
	addr net.Addr
}

func (a advertised) Addr() net.Addr { return a.addr }

// Addr returns the address the broker listens on (the bootstrap address for
// clients, unless Config.Advertise sends them through a proxy).
func (b *Broker) Addr() string { return b.addr }

// Cluster exposes the underlying kfake cluster, for tests that inject
// faults (Cluster.Fault) or intercept requests (Cluster.ControlKey).
func (b *Broker) Cluster() *kfake.Cluster { return b.cluster }

// Close stops the broker, closing every client connection and, with a data
// directory, saving its state. It is safe to call more than once.
func (b *Broker) Close() error {
	b.stop()
	b.shutdown()
	return nil
}

func (b *Broker) shutdown() {
	b.once.Do(b.cluster.Close)
}

// slogAdapter forwards kfake's warnings and errors to slog; its info and
// debug output is per request and far too chatty for a development stack.
type slogAdapter struct {
	logger *slog.Logger
}

func (a slogAdapter) Logf(level kfake.LogLevel, format string, args ...any) {
	if a.logger == nil {
		return
	}
	switch level {
	case kfake.LogLevelError:
		a.logger.Error("kfake: " + fmt.Sprintf(format, args...))
	case kfake.LogLevelWarn:
		a.logger.Warn("kfake: " + fmt.Sprintf(format, args...))
	}
}
