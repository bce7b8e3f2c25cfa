package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// command is a command of this repository built once per test binary.
type command struct {
	once sync.Once
	path string
	err  error
}

var publisherBin, persistenceBin command

// build builds the command at pkg (e.g. "./cmd/publisher") of the module
// in moduleDir, once, into a temporary directory RemoveBinaries deletes.
func (b *command) build(t testing.TB, moduleDir, pkg string) string {
	t.Helper()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "publisher-test-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-o", b.path, pkg)
		cmd.Dir = moduleDir
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build %s in %s: %w\n%s", pkg, moduleDir, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// RemoveBinaries deletes what PublisherBinary and StartPersistence built;
// a TestMain calls it after the tests.
func RemoveBinaries() {
	for _, b := range []*command{&publisherBin, &persistenceBin} {
		if b.path != "" {
			_ = os.RemoveAll(filepath.Dir(b.path))
		}
	}
}

// sourceDir is the directory of this file: the module's testenv package.
func sourceDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// PublisherBinary builds the real publisher command once per test binary
// and returns its path (RemoveBinaries deletes it).
func PublisherBinary(t testing.TB) string {
	t.Helper()
	return publisherBin.build(t, filepath.Join(sourceDir(), ".."), "./cmd/publisher")
}

// Process is the publisher running as a child process.
type Process struct {
	cmd       *exec.Cmd
	GRPCAddr  string
	AdminAddr string
	exited    chan struct{} // closed once the process is gone
	err       error         // its exit status, set before exited closes
}

// ProcessEnv is the environment of a publisher process for env: loopback
// ports picked by the system, one replica, the tests' token. extra
// overrides or adds variables.
func (e *Env) ProcessEnv(extra map[string]string) []string {
	vars := map[string]string{
		"PUBLISHER_GRPC_ADDR":       "127.0.0.1:0",
		"PUBLISHER_ADMIN_ADDR":      "127.0.0.1:0",
		"KAFKA_BROKERS":             e.BrokerAddr(),
		"KAFKA_TOPIC_PARTITIONS":    "6",
		"KAFKA_REPLICATION_FACTOR":  "1",
		"KAFKA_MIN_INSYNC_REPLICAS": "1",
		"PERSISTENCE_TARGET":        e.Persistence.Addr,
		"SERVICE_TOKEN":             Token,
		"SERVICE_TOKENS":            "tests:" + Token,
		"SERVICE_ACL":               "tests=/biobridge.publisher.v1.PublisherService/*",
		"LOG_PSEUDONYM_KEY":         "0123456789abcdef-tests",
		"LOG_FORMAT":                "json",
		"LOG_LEVEL":                 "info",
		"PUBLISH_BACKOFF_INITIAL":   "100ms",
		"PUBLISH_BACKOFF_MAX":       "2s",
		"PUBLISH_STATS_INTERVAL":    "500ms",
		"PATH":                      os.Getenv("PATH"),
		"HOME":                      os.Getenv("HOME"),
	}
	for k, v := range extra {
		vars[k] = v
	}
	out := make([]string, 0, len(vars))
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	return out
}

// StartProcess runs the publisher binary with environ and waits until it
// logs that it runs (which names its bound addresses). Its log goes to the
// test log; the test's end kills it.
func (e *Env) StartProcess(environ []string) *Process {
	e.t.Helper()
	cmd := exec.Command(PublisherBinary(e.t))
	cmd.Env = environ
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	p := &Process{cmd: cmd, exited: make(chan struct{})}
	ready := make(chan struct{})
	logger := Logger(e.t)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			var line struct {
				Msg       string `json:"msg"`
				Level     string `json:"level"`
				GRPCAddr  string `json:"grpc_addr"`
				AdminAddr string `json:"admin_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "publisher running" {
				p.GRPCAddr, p.AdminAddr = line.GRPCAddr, line.AdminAddr
				once.Do(func() { close(ready) })
				continue
			}
			if line.Level != "INFO" && line.Level != "DEBUG" {
				logger.Warn("publisher process: " + sc.Text())
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		p.err = cmd.Wait()
		close(p.exited)
	}()
	e.t.Cleanup(p.Kill)
	select {
	case <-ready:
	case <-p.exited:
		e.t.Fatalf("publisher process exited before it ran: %v", p.err)
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGQUIT) // its goroutines, to the log
		<-p.exited
		e.t.Fatal("publisher process did not start within 60s")
	}
	return p
}

// Kill sends SIGKILL (no shutdown, no flush, no acks) and waits for the
// process to be gone. A second Kill does nothing.
func (p *Process) Kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
	}
}

// Stop sends SIGTERM and waits for a clean exit.
func (p *Process) Stop() error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.exited:
		return p.err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("publisher did not stop within 30s")
	}
}
