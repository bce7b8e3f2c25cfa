package ingesttest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	"github.com/biobridge/bridge/emulator"
	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/topics"
	"github.com/biobridge/bridge/services/ingest/server"
)

// leftovers lists, as "schema.table.column: n", every column of every table
// in the services' schemas that still mentions needle. The tables and
// columns come from information_schema, so a table added later (with a
// user column or a payload that embeds the user) is checked without
// touching this test: an erasure that forgets it fails here.
func leftovers(t *testing.T, e *env, needle string) []string {
	t.Helper()
	ctx := context.Background()
	rows, err := e.db.Query(ctx, `
		SELECT c.table_schema, c.table_name, c.column_name, c.data_type FROM information_schema.columns c
		JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
		WHERE c.table_schema IN ('biometrics', 'tokens', 'ingest') AND t.table_type = 'BASE TABLE'
		  AND c.data_type IN ('text', 'character varying', 'jsonb', 'json', 'ARRAY', 'bytea')
		ORDER BY 1, 2, 3`)
	require.NoError(t, err)
	type col struct{ schema, table, column, typ string }
	var cols []col
	for rows.Next() {
		var c col
		require.NoError(t, rows.Scan(&c.schema, &c.table, &c.column, &c.typ))
		cols = append(cols, c)
	}
	require.NoError(t, rows.Err())
	require.Greater(t, len(cols), 20, "the schemas are there")
	var out []string
	for _, c := range cols {
		cond := fmt.Sprintf(`%q::text LIKE '%%' || $1 || '%%'`, c.column)
		if c.typ == "bytea" {
			cond = fmt.Sprintf(`position(convert_to($1, 'UTF8') in %q) > 0`, c.column)
		}
		var n int
		require.NoError(t, e.db.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %q.%q WHERE %s`, c.schema, c.table, cond), needle).Scan(&n))
		if n > 0 {
			out = append(out, fmt.Sprintf("%s.%s.%s: %d", c.schema, c.table, c.column, n))
		}
	}
	return out
}

// redisKeys lists the test's Redis keys that mention needle.
func redisKeys(t *testing.T, e *env, needle string) []string {
	t.Helper()
	opts, err := redis.ParseURL(e.redisURL)
	require.NoError(t, err)
	rdb := redis.NewClient(opts)
	defer func() { _ = rdb.Close() }()
	var out []string
	iter := rdb.Scan(context.Background(), 0, e.prefix+"*", 500).Iterator()
	for iter.Next(context.Background()) {
		if strings.Contains(iter.Val(), needle) {
			out = append(out, iter.Val())
		}
	}
	require.NoError(t, iter.Err())
	return out
}

// pendingUserErased returns the user_erased entries waiting in persistence's
// outbox for user (this harness runs no publisher: the entry is where the
// event waits for Kafka).
func pendingUserErased(t *testing.T, e *env, user string) int {
	t.Helper()
	rows, err := e.db.Query(context.Background(), `SELECT topic, payload FROM biometrics.outbox WHERE key = $1`, user)
	require.NoError(t, err)
	defer rows.Close()
	n := 0
	for rows.Next() {
		var topic string
		var payload []byte
		require.NoError(t, rows.Scan(&topic, &payload))
		if topic != topics.Connections {
			continue
		}
		var ev biometricsv1.ConnectionEvent
		require.NoError(t, proto.Unmarshal(payload, &ev))
		if ev.GetType() == biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_USER_ERASED {
			n++
		}
	}
	require.NoError(t, rows.Err())
	return n
}

// userWithEverything connects user to WHOOP and Oura (emulated user emuUser
// with three days of history, backfilled) and pushes HealthKit samples.
func userWithEverything(t *testing.T, e *env, user, emuUser string) {
	t.Helper()
	ctx := context.Background()
	_, err := e.emu.AddUser(emulator.UserSpec{Name: emuUser})
	require.NoError(t, err)
	_, err = e.emu.GenerateHistory(ctx, emulator.HistorySpec{User: emuUser, Days: 3})
	require.NoError(t, err)
	e.connect(user, "whoop", emuUser)
	e.connect(user, "oura", emuUser)
	require.Eventually(t, func() bool { return completed(backfills(t, e, user)) == 2 }, 60*time.Second, 50*time.Millisecond,
		"backfills never completed: %v", backfills(t, e, user))
	code, body := pushHealthKit(t, e, user, `{"samples":[{"uuid":"`+user+`-hk-1","type":"HKQuantityTypeIdentifierHeartRate","value":61,"unit":"count/min","start_date":"`+
		time.Now().UTC().Add(-time.Minute).Truncate(time.Second).Format(time.RFC3339)+`","end_date":"`+
		time.Now().UTC().Add(-time.Minute).Truncate(time.Second).Format(time.RFC3339)+`"}]}`)
	require.Equal(t, http.StatusOK, code, body)
	// The data is really there before the erasure.
	require.NotEmpty(t, e.latest(user))
	require.NotEmpty(t, leftovers(t, e, user))
	require.NotEmpty(t, redisKeys(t, e, user))
}

func pushHealthKit(t *testing.T, e *env, user, body string) (int, string) {
	t.Helper()
	tok, err := auth.IssueUserToken(userSecret, user, time.Hour)
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodPost, e.gatewayURL+"/v1/healthkit/samples", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	code, text, _ := answer(t, res)
	return code, text
}

// eraseREST calls DELETE /v1/users/{user} with the operators' service token.
func eraseREST(t *testing.T, e *env, user string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodDelete, e.gatewayURL+"/v1/users/"+user, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+opsToken)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	code, body, _ := answer(t, res)
	return code, body
}

// A user with WHOOP, Oura (backfilled) and HealthKit data is erased through
// the REST route: no row in any schema, no Redis key, no token is left; the
// vendors saw the revocations; the user_erased event waits for Kafka; a
// webhook and a push for the user afterwards store nothing; a second
// erasure is a no-op success; another user is untouched.
func TestEraseUserEverywhere(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{ingest: func(c *server.Config) {
		c.BackfillDays, c.ConnectionSyncInterval = 4, 100*time.Millisecond
	}})
	ctx := context.Background()
	userWithEverything(t, e, "user-erase", "erin")
	userWithEverything(t, e, "user-keep", "kurt")
	var vendorIDs []string
	rows, err := e.db.Query(ctx, `SELECT vendor_user_id FROM tokens.connections WHERE user_id = 'user-erase'`)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		vendorIDs = append(vendorIDs, id)
	}
	require.Len(t, vendorIDs, 2)
	keepBefore := leftovers(t, e, "user-keep")
	before := e.emu.Counters()

	started := time.Now()
	code, body := eraseREST(t, e, "user-erase")
	took := time.Since(started)
	require.Equal(t, http.StatusOK, code, body)
	assert.Contains(t, body, `"already_erased":false`)
	var readings int
	require.NoError(t, e.db.QueryRow(ctx, `SELECT count(*) FROM biometrics.readings WHERE user_id = 'user-keep'`).Scan(&readings))
	t.Logf("erased a user with two backfilled connections and HealthKit data in %s (the other user keeps %d readings)",
		took.Round(time.Millisecond), readings)
	assert.Contains(t, body, `"whoop"`)
	assert.Contains(t, body, `"oura"`)

	after := e.emu.Counters()
	assert.Equal(t, before.Whoop.Revocations+1, after.Whoop.Revocations, "WHOOP saw the revoke call")
	assert.Equal(t, before.Oura.Revocations+1, after.Oura.Revocations, "Oura saw the revoke call")

	assert.Equal(t, []string{"biometrics.outbox.key: 1", "biometrics.outbox.payload: 1", "biometrics.outbox_heads.key: 1"}, leftovers(t, e, "user-erase"),
		"nothing about the user is left but the user_erased event waiting for the publisher (the entry and its key's head)")
	assert.Equal(t, 1, pendingUserErased(t, e, "user-erase"))
	assert.Empty(t, redisKeys(t, e, "user-erase"), "no cache entry, token or lock of the user")
	for _, id := range vendorIDs {
		var n int
		require.NoError(t, e.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM tokens.connections WHERE vendor_user_id = $1)
			+ (SELECT count(*) FROM ingest.jobs WHERE payload->>'user_id' = $1)`, id).Scan(&n))
		assert.Zero(t, n, "nothing left under the vendor account %s", id)
	}
	assert.Empty(t, e.latest("user-erase"))
	assert.Empty(t, redisKeys(t, e, "user-erase"), "a read after the erasure does not cache an empty entry for the user")

	// Late data: a new night at WHOOP (its webhook is delivered and
	// acknowledged, then dropped: no connection maps to the account) and a
	// push from the app are refused.
	start, end := night(2)
	_, err = e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "erin", Vendor: emulator.Whoop, Type: "sleep", Start: start, End: end})
	require.NoError(t, err)
	e.waitWebhooks()
	e.waitJobsSettled(20 * time.Second)
	code, body = pushHealthKit(t, e, "user-erase", `{"samples":[{"uuid":"late","type":"HKQuantityTypeIdentifierHeartRate","value":70,"unit":"count/min","start_date":"2026-11-20T08:00:00Z","end_date":"2026-11-20T08:00:00Z"}]}`)
	assert.Equal(t, http.StatusBadRequest, code, body)
	assert.Contains(t, body, "user_erased")
	// The app cannot connect a vendor again for the erased user.
	tok, err := auth.IssueUserToken(userSecret, "user-erase", time.Hour)
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodPost, e.gatewayURL+"/v1/connections/whoop/authorize", strings.NewReader(`{}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	code, body, reason := answer(t, res)
	assert.Equal(t, http.StatusBadRequest, code, body)
	assert.Equal(t, "user_erased", reason)
	assert.Equal(t, []string{"biometrics.outbox.key: 1", "biometrics.outbox.payload: 1", "biometrics.outbox_heads.key: 1"}, leftovers(t, e, "user-erase"),
		"late data stored nothing")

	// Again: success, nothing new.
	code, body = eraseREST(t, e, "user-erase")
	require.Equal(t, http.StatusOK, code, body)
	assert.Contains(t, body, `"already_erased":true`)
	assert.Equal(t, 1, pendingUserErased(t, e, "user-erase"), "one user_erased event, however often erased")
	assert.Equal(t, after.Whoop.Revocations, e.emu.Counters().Whoop.Revocations)

	// The other user keeps everything.
	assert.Equal(t, keepBefore, leftovers(t, e, "user-keep"))
	assert.NotEmpty(t, e.latest("user-keep"))

	// Only a caller the ACL allows may erase (here: a token ingest does
	// not know at all).
	req, err = http.NewRequest(http.MethodDelete, e.gatewayURL+"/v1/users/user-keep", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer not-a-token")
	res, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	code, _, _ = answer(t, res)
	assert.Equal(t, http.StatusUnauthorized, code)
}

// crashStepEnv names the erasure step after which the child ingest kills
// itself (SIGKILL, no cleanup), as a crash half-way through would.
const crashStepEnv = "INGEST_TEST_CRASH_AFTER_ERASURE_STEP"

// Ingest dies (SIGKILL) half-way through an erasure, after each step in
// turn; the caller's retry on a new ingest finishes it, and the end state
// is the same as an erasure that never crashed.
func TestErasureResumesAfterCrash(t *testing.T) {
	t.Parallel()
	for _, step := range []string{"connections", "jobs"} {
		t.Run(step, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, options{externalIngest: true, ingest: func(c *server.Config) {
				c.BackfillDays, c.ConnectionSyncInterval = 2, 100*time.Millisecond
			}})
			child := exec.Command(os.Args[0], "-test.run=^$")
			child.Env = append(childEnvironment(e.ingestCfg), crashStepEnv+"="+step,
				"INGEST_BACKFILL_DAYS=2", "INGEST_CONNECTION_SYNC_INTERVAL=100ms")
			child.Stdout, child.Stderr = t.Output(), t.Output()
			require.NoError(t, child.Start())
			exited := make(chan struct{})
			go func() {
				_ = child.Wait()
				close(exited)
			}()
			t.Cleanup(func() {
				_ = child.Process.Kill()
				<-exited
			})
			health := healthpb.NewHealthClient(dial(t, e.ingestAddr))
			require.Eventually(t, func() bool {
				resp, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{})
				return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
			}, 30*time.Second, 50*time.Millisecond, "the child ingest starts")

			userWithEverything(t, e, "user-crash", "carla")
			_, err := e.ingestRPC.DeleteUserData(svc(opsToken), &ingestv1.DeleteUserDataRequest{UserId: "user-crash"})
			require.Error(t, err, "the process died during the call")
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Fatal("the child did not die after the step")
			}
			// Half-way: the step is recorded, the biometric data is not
			// erased yet, nothing was published.
			var done int
			require.NoError(t, e.db.QueryRow(context.Background(), `SELECT step FROM ingest.erasures WHERE completed_at IS NULL`).Scan(&done))
			assert.Equal(t, map[string]int{"connections": 1, "jobs": 2}[step], done)
			var connections, readings int
			require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM tokens.connections WHERE user_id = 'user-crash'`).Scan(&connections))
			require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM biometrics.readings WHERE user_id = 'user-crash'`).Scan(&readings))
			assert.Zero(t, connections, "the connections step finished before the crash")
			assert.Positive(t, readings, "the data step had not run")
			assert.Zero(t, pendingUserErased(t, e, "user-crash"))

			// A new ingest, the caller retries: the erasure finishes.
			e.startIngest()
			resp, err := e.ingestRPC.DeleteUserData(svc(opsToken), &ingestv1.DeleteUserDataRequest{UserId: "user-crash"})
			require.NoError(t, err)
			assert.False(t, resp.GetAlreadyErased())
			got := leftovers(t, e, "user-crash")
			sort.Strings(got)
			assert.Equal(t, []string{"biometrics.outbox.key: 1", "biometrics.outbox.payload: 1", "biometrics.outbox_heads.key: 1"}, got)
			assert.Equal(t, 1, pendingUserErased(t, e, "user-crash"))
			assert.Empty(t, redisKeys(t, e, "user-crash"))
			var attempts int
			require.NoError(t, e.db.QueryRow(context.Background(), `SELECT attempts FROM ingest.erasures WHERE completed_at IS NOT NULL`).Scan(&attempts))
			assert.Equal(t, 2, attempts)
		})
	}
}

// The app deletes a HealthKit sample the bridge never stored (the delete
// overtook the push); the push retried afterwards is refused with
// record_deleted instead of bringing the sample back.
func TestHealthKitRetriedPushAfterDeleteOfUnknownSample(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{})
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)
	code, body := pushHealthKit(t, e, "user-hkd", `{"deleted":["never-stored"]}`)
	require.Equal(t, http.StatusOK, code, body)
	assert.Contains(t, body, "DELETE_STATUS_NOT_FOUND")

	code, body = pushHealthKit(t, e, "user-hkd", `{"samples":[{"uuid":"never-stored","type":"HKQuantityTypeIdentifierHeartRate","value":66,"unit":"count/min","start_date":"`+at+`","end_date":"`+at+`"}]}`)
	require.Equal(t, http.StatusOK, code, body)
	assert.Contains(t, body, `"reason":"record_deleted"`)
	assert.Contains(t, body, `"accepted":0`)
	assert.Empty(t, e.latest("user-hkd"), "the deleted sample did not come back")
}

// Oura's heart-rate series is read by the backfill and stored as
// heart_rate_bpm, one reading per sample, within the connection's request
// budget: the series is paged by the thousand, so a few requests carry
// days of five-minute samples.
func TestOuraHeartRateBackfill(t *testing.T) {
	t.Parallel()
	const budget = 40
	e := newEnv(t, options{
		emu: func(c *emulator.Config) { c.OuraRateLimit, c.OuraRateWindow = budget, time.Minute },
		ingest: func(c *server.Config) {
			c.BackfillDays, c.ConnectionSyncInterval = 3, 100*time.Millisecond
			c.OuraRateLimit, c.OuraRateWindow = budget, time.Minute
		}})
	ctx := context.Background()
	_, err := e.emu.AddUser(emulator.UserSpec{Name: "olga"})
	require.NoError(t, err)
	hist, err := e.emu.GenerateHistory(ctx, emulator.HistorySpec{User: "olga", Days: 2, Vendors: []emulator.Vendor{emulator.Oura}})
	require.NoError(t, err)
	samples := hist.Records["oura/heartrate"]
	require.Greater(t, samples, 200, "the emulator generated a series: %v", hist.Records)
	e.emu.ResetCounters()
	e.connect("user-o", "oura", "olga")
	require.Eventually(t, func() bool { return completed(backfills(t, e, "user-o")) == 1 }, 60*time.Second, 50*time.Millisecond)

	var got []*biometricsv1.StoredReading
	next := ""
	for {
		resp, err := e.biometrics.QueryReadings(svc(readerToken), &biometricsv1.QueryReadingsRequest{
			UserId: "user-o", Metric: "heart_rate_bpm", PageSize: 1000, PageToken: next})
		require.NoError(t, err)
		got = append(got, resp.GetReadings()...)
		if next = resp.GetNextPageToken(); next == "" {
			break
		}
	}
	seen := map[int64]bool{}
	for _, r := range got {
		assert.Equal(t, biometricsv1.Source_SOURCE_OURA, r.GetSource())
		ts := r.GetObservedAt().AsTime().Unix()
		assert.False(t, seen[ts], "one reading per sample time")
		seen[ts] = true
	}
	assert.Equal(t, samples, len(got), "every sample of the series, once")

	// Five document collections of one page each, the series in pages
	// of a thousand samples, the broker's profile read.
	c := e.emu.Counters().Oura
	t.Logf("backfilled %d heart-rate samples with %d Oura requests in all (busiest %s window: %d of %d)",
		len(got), c.APICallsTotal, time.Minute, c.MaxRequestsInWindow, budget)
	assert.LessOrEqual(t, c.APICallsTotal, int64(5+samples/1000+1+1), "the series costs one request per thousand samples")
	assert.LessOrEqual(t, c.MaxRequestsInWindow, int64(budget), "the connection's budget held")
	assert.Zero(t, c.RateLimited, "the vendor never had to say 429")

	// A second read of the same window (a reconnect's backfill) stores
	// nothing twice.
	e.connect("user-o", "oura", "olga")
	require.Eventually(t, func() bool { return completed(backfills(t, e, "user-o")) == 2 }, 60*time.Second, 50*time.Millisecond)
	var versions int
	require.NoError(t, e.db.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM biometrics.records WHERE user_id = 'user-o' AND kind = 'heartrate'`).Scan(&versions))
	assert.Equal(t, 1, versions)
}
