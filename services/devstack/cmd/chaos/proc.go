package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// proc is one process of the suite: a service replica, the emulator, the
// broker or a store. It can be killed and started again with the same
// command line, as a supervisor restarting a crashed pod would.
type proc struct {
	name  string
	path  string
	args  []string
	env   []string
	log   string
	cred  *syscall.Credential
	ready string // URL answering 2xx once the process serves, or "" (tcp)
	addr  string // host:port accepting connections once it serves

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = f, f
	// The child dies with the harness, whatever ends it: no process of a
	// failed run is left behind on the shared machine.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: p.cred}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = f.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// signal sends sig and waits up to wait for the process to exit, then
// kills it.
func (p *proc) signal(sig syscall.Signal, wait time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (p *proc) kill() { p.signal(syscall.SIGKILL, 5*time.Second) }
func (p *proc) stop() { p.signal(syscall.SIGTERM, 15*time.Second) }

// waitReady waits until the process answers on its readiness URL (or
// accepts TCP connections on addr).
func (p *proc) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if !p.running() {
			return fmt.Errorf("%s exited during start; see %s", p.name, p.log)
		}
		if p.ready != "" {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.ready, nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode/100 == 2 {
					return nil
				}
			}
		} else if c, err := net.DialTimeout("tcp", p.addr, time.Second); err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s; see %s", p.name, timeout, p.log)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// postgresCredential is the credential PostgreSQL runs under: initdb and
// postgres refuse root, so as root the cluster belongs to the postgres
// system user.
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	out, err := exec.Command("id", "-u", "postgres").Output()
	if err != nil {
		return nil, errors.New("running as root and there is no postgres user to run PostgreSQL as")
	}
	uid, err := strconv.Atoi(string(trimNL(out)))
	if err != nil {
		return nil, err
	}
	out, err = exec.Command("id", "-g", "postgres").Output()
	if err != nil {
		return nil, err
	}
	gid, err := strconv.Atoi(string(trimNL(out)))
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// initPostgres creates a cluster of its own in dir.
func initPostgres(pgBin, dir string, cred *syscall.Credential) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if cred != nil {
		if err := os.Chown(filepath.Dir(dir), int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	}
	cmd := exec.Command(filepath.Join(pgBin, "initdb"), "-D", dir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	return nil
}
