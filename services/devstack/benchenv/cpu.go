package benchenv

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// CPUMeter measures the CPU time spent during a phase by this process and
// by the PostgreSQL backends connected to one database. On a shared
// machine wall time swings with the other jobs; CPU time per reading says
// what a path costs whatever the load. The backends are read from
// /proc/<pid>/stat, so PostgreSQL must run on this host; when it does not,
// pg stays zero and ok false.
type CPUMeter struct {
	dbURL string
	self  time.Duration
	pg    map[int]time.Duration
}

// clockTicks is USER_HZ, 100 on every Linux platform Go supports.
const clockTicks = 100

// StartCPU starts measuring this process and dbURL's backends.
func StartCPU(ctx context.Context, dbURL string) (*CPUMeter, error) {
	m := &CPUMeter{dbURL: dbURL, self: selfCPU()}
	var err error
	m.pg, err = backendCPU(ctx, dbURL)
	return m, err
}

// Stop returns the CPU time of this process and of the database's
// backends since StartCPU. Backends that connected meanwhile count from
// zero; call it before closing the pools whose backends it should count.
func (m *CPUMeter) Stop(ctx context.Context) (self, pg time.Duration, ok bool, err error) {
	self = selfCPU() - m.self
	now, err := backendCPU(ctx, m.dbURL)
	if err != nil {
		return self, 0, false, err
	}
	for pid, t := range now {
		pg += t - m.pg[pid]
	}
	return self, pg, len(now) > 0, nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// backendCPU returns the CPU time of every backend connected to dbURL's
// database (its own included), by pid; backends whose /proc entry cannot
// be read are left out.
func backendCPU(ctx context.Context, dbURL string) (map[int]time.Duration, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, fmt.Errorf("cpu meter: %w", err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database()`)
	if err != nil {
		return nil, fmt.Errorf("cpu meter: %w", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil, fmt.Errorf("cpu meter: %w", err)
	}
	out := map[int]time.Duration{}
	for _, pid := range pids {
		if t, ok := procCPU(int(pid)); ok {
			out[int(pid)] = t
		}
	}
	return out, nil
}

// procCPU reads utime+stime of a process from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	// After "pid (comm) " come state (field 3) ... utime (14), stime (15).
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+st) * time.Second / clockTicks, true
}
