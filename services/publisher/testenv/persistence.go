package testenv

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/biobridge/bridge/pkg/testpg"
)

// Persistence is the real persistence service running as a child process,
// built from this repository's services/persistence: the publisher's
// module does not depend on the persistence module, as in production,
// where they are separate binaries.
type Persistence struct {
	// Addr is its gRPC address.
	Addr string
}

// StartPersistence builds the persistence command (once per test binary)
// and runs it on a free port over the database at dbURL (it migrates the
// schema as it starts) and a Redis key prefix of the test's own. It waits
// until the gRPC server listens; the test's end stops it and checks it
// stopped cleanly.
func StartPersistence(t testing.TB, dbURL string) *Persistence {
	t.Helper()
	bin := persistenceBin.build(t, filepath.Join(sourceDir(), "..", "..", "persistence"), "./cmd/persistence")
	redisURL, prefix := testpg.NewRedis(t)
	cmd := exec.Command(bin)
	cmd.Env = []string{
		"PERSISTENCE_GRPC_ADDR=127.0.0.1:0",
		"PERSISTENCE_ADMIN_ADDR=127.0.0.1:0",
		"POSTGRES_URL=" + dbURL,
		"REDIS_URL=" + redisURL,
		"REDIS_KEY_PREFIX=" + prefix,
		"SERVICE_TOKENS=tests:" + Token,
		"SERVICE_ACL_OPEN=true",
		"LOG_PSEUDONYM_KEY=0123456789abcdef-tests",
		"LOG_FORMAT=json",
		"LOG_LEVEL=info",
		// Publisher tests long-poll; a short fallback poll keeps nack
		// retry delays short.
		"OUTBOX_POLL_INTERVAL=50ms",
		"SHUTDOWN_GRACE_PERIOD=2s",
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Persistence{}
	ready := make(chan struct{})
	exited := make(chan struct{})
	var waitErr error
	logger := Logger(t)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		listening := false
		for sc.Scan() {
			var line struct {
				Msg   string `json:"msg"`
				Level string `json:"level"`
				Addr  string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "grpc server listening" && !listening {
				listening = true
				p.Addr = line.Addr
				close(ready)
				continue
			}
			if line.Level != "INFO" && line.Level != "DEBUG" {
				logger.Warn("persistence process: " + sc.Text())
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
			t.Errorf("persistence process exited during the test: %v", waitErr)
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			if waitErr != nil {
				t.Errorf("stop persistence: %v", waitErr)
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Error("persistence process did not stop within 30s")
		}
	})
	select {
	case <-ready:
	case <-exited:
		t.Fatalf("persistence process exited before it listened: %v", waitErr)
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGQUIT) // its goroutines, to the log
		<-exited
		t.Fatal("persistence process did not listen within 60s")
	}
	return p
}
