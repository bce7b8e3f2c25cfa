package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/biobridge/bridge/pkg/service"
)

// Unauthenticated storm: the numbers of the acceptance test.
const (
	stormClients   = 200
	stormBodyBytes = 30 << 20
	// stormPeakRSSBound is the most resident memory the gateway process may
	// ever reach while it refuses the storm. Reading the bodies before
	// checking the JWT (as the gateway once did, up to its 32 MiB cap)
	// would need 200 x 30 MiB = 6000 MiB.
	stormPeakRSSBound = 96 << 20
)

// gatewayProcessEnv tells the test binary to run the gateway instead of the
// tests (TestMain), so the storm measures a process of its own.
const gatewayProcessEnv = "BIOBRIDGE_TEST_RUN_GATEWAY"

func TestMain(m *testing.M) {
	if os.Getenv(gatewayProcessEnv) == "1" {
		service.Exec(spec)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestUnauthenticatedPushStormKeepsMemoryFlat sends 200 concurrent 30 MiB
// HealthKit pushes without a valid JWT to a gateway in a process of its own:
// every one must be refused with 401, and the gateway's peak resident
// memory (VmHWM) must stay under stormPeakRSSBound.
func TestUnauthenticatedPushStormKeepsMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("storm test")
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc to read the gateway's peak RSS")
	}
	addr := freeAddr(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		gatewayProcessEnv+"=1",
		"GATEWAY_HTTP_ADDR="+addr,
		"GATEWAY_ADMIN_ADDR="+freeAddr(t),
		// Backends are dialled lazily: none is needed to refuse.
		"INGEST_TARGET=127.0.0.1:1", "TOKENBROKER_TARGET=127.0.0.1:1", "PERSISTENCE_TARGET=127.0.0.1:1",
		"USER_TOKEN_SECRET=storm-test-user-token-secret-0123456789",
		"LOG_PSEUDONYM_KEY=storm-test-pseudonym-key",
		"LOG_LEVEL=warn",
	)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	waitListening(t, addr)
	before := peakRSS(t, cmd.Process.Pid)

	var wg sync.WaitGroup
	codes := make(chan string, stormClients)
	for i := range stormClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			auth := "" // half send no token, half a token that is not a JWT
			if i%2 == 1 {
				auth = "Bearer not-a-jwt"
			}
			codes <- push(addr, auth)
		}()
	}
	wg.Wait()
	close(codes)
	counts := map[string]int{}
	for c := range codes {
		counts[c]++
	}
	peak := peakRSS(t, cmd.Process.Pid)
	t.Logf("gateway peak RSS: %.1f MiB before the storm, %.1f MiB after %d x %d MiB unauthenticated pushes (bound %d MiB); answers %v",
		float64(before)/(1<<20), float64(peak)/(1<<20), stormClients, stormBodyBytes>>20, stormPeakRSSBound>>20, counts)
	if counts["401"] != stormClients {
		t.Errorf("want all %d pushes refused with 401, got %v", stormClients, counts)
	}
	if peak > stormPeakRSSBound {
		t.Errorf("gateway peak RSS %d MiB exceeds the bound of %d MiB", peak>>20, stormPeakRSSBound>>20)
	}
}

// push sends a 30 MiB HealthKit push the way a hostile client does: it
// keeps writing the body while it reads the answer, over a raw connection
// (net/http's client reports a write error instead of an early answer).
func push(addr, authorization string) string {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "dial error"
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	head := "POST /v1/healthkit/samples HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\n" +
		"Content-Length: " + strconv.Itoa(stormBodyBytes) + "\r\n"
	if authorization != "" {
		head += "Authorization: " + authorization + "\r\n"
	}
	if _, err := io.WriteString(conn, head+"\r\n"); err != nil {
		return "write error"
	}
	go func() { _, _ = io.Copy(conn, io.LimitReader(zeros{}, stormBodyBytes)) }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "read error"
	}
	_ = resp.Body.Close()
	return strconv.Itoa(resp.StatusCode)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			_ = resp.Body.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("gateway did not listen on %s", addr)
}

// peakRSS reads VmHWM, the process's peak resident set size, in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}
