// Package admin serves the emulator's admin API under /_admin/: JSON routes
// that create users, records and history, set faults, report counters and
// drive webhooks, the things the real vendors cannot be made to do. It is
// written against API, which the emulator facade implements, so it does not
// import the facade.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/biobridge/bridge/emulator/internal/jsonhttp"
	"github.com/biobridge/bridge/emulator/internal/store"
)

// API is what the admin routes call: the emulator's Go API.
type API interface {
	Seed() uint64
	Users() []store.User
	AddUser(spec store.UserSpec) (store.User, error)
	ListRecords(f store.RecordFilter) []store.Record
	CreateRecord(ctx context.Context, spec store.RecordSpec) ([]store.Record, error)
	UpdateRecord(ctx context.Context, vendor store.Vendor, typ, id string, values map[string]float64) (store.Record, error)
	ScoreRecord(ctx context.Context, typ, id string) ([]store.Record, error)
	DeleteRecord(ctx context.Context, vendor store.Vendor, typ, id string) error
	GenerateHistory(ctx context.Context, spec store.HistorySpec) (store.HistoryResult, error)
	Faults() store.Faults
	SetFaults(f store.Faults) error
	Counters() store.Counters
	ResetCounters()
	ExpireAccessTokens(vendor store.Vendor, userName string) int
	RevokeGrants(vendor store.Vendor, userName string) int
	SetWebhookTargets(whoopURL, ouraURL string) error
	WaitWebhooks(ctx context.Context) error
	// WebhooksPending is how many deliveries are still pending.
	WebhooksPending() int64
	VerifyOuraCallback(ctx context.Context, callbackURL, token string) error
	DemoTick(ctx context.Context) (store.DemoResult, error)
}

// Routes registers the admin API on mux. Every route speaks JSON; errors are
// {"error": "..."} with 400 (invalid), 404 (unknown user or record) or 503
// (closed). The admin API has no authentication: bind the emulator to
// loopback.
//
//	GET    /_admin/health                         {"status":"ok","seed":N}
//	GET    /_admin/users                          [User]
//	POST   /_admin/users                          UserSpec -> 201 User
//	GET    /_admin/records?user=&vendor=&type=    [Record]
//	POST   /_admin/records                        RecordSpec -> 201 [Record], webhooks delivered
//	PATCH  /_admin/records/{vendor}/{type}/{id}   {"values":{...}} -> Record, update webhook
//	POST   /_admin/records/whoop/{type}/{id}/score -> [Record], PENDING_SCORE -> SCORED, *.updated
//	DELETE /_admin/records/{vendor}/{type}/{id}   -> 204, delete webhook
//	POST   /_admin/history                        HistorySpec -> HistoryResult
//	GET    /_admin/faults                         Faults
//	PUT    /_admin/faults                         Faults -> Faults (latency as "250ms")
//	GET    /_admin/counters                       Counters
//	POST   /_admin/counters/reset                 -> 204
//	POST   /_admin/tokens/expire                  {"vendor":"","user":""} -> {"expired":N}
//	POST   /_admin/grants/revoke                  {"vendor":"","user":""} -> {"revoked":N}
//	PUT    /_admin/webhooks/targets               {"whoop_url":"","oura_url":""} -> 204
//	POST   /_admin/webhooks/wait                  {"timeout":"5s"} -> 204, or 504 {"pending":N}
//	POST   /_admin/oura/verify                    {"callback_url":"","verification_token":""} -> 204, or 502 {"error"}
//	POST   /_admin/demo/tick                      -> DemoResult
func Routes(mux *http.ServeMux, e API) {
	mux.HandleFunc("GET /_admin/health", func(w http.ResponseWriter, _ *http.Request) {
		jsonhttp.Write(w, http.StatusOK, map[string]any{"status": "ok", "seed": e.Seed()})
	})
	mux.HandleFunc("GET /_admin/users", func(w http.ResponseWriter, _ *http.Request) {
		jsonhttp.Write(w, http.StatusOK, e.Users())
	})
	mux.HandleFunc("POST /_admin/users", func(w http.ResponseWriter, r *http.Request) {
		var spec store.UserSpec
		if !decodeAdmin(w, r, &spec) {
			return
		}
		u, err := e.AddUser(spec)
		adminReply(w, http.StatusCreated, u, err)
	})
	mux.HandleFunc("GET /_admin/records", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		jsonhttp.Write(w, http.StatusOK, e.ListRecords(store.RecordFilter{User: q.Get("user"), Vendor: store.Vendor(q.Get("vendor")), Type: q.Get("type")}))
	})
	mux.HandleFunc("POST /_admin/records", func(w http.ResponseWriter, r *http.Request) {
		var spec store.RecordSpec
		if !decodeAdmin(w, r, &spec) {
			return
		}
		recs, err := e.CreateRecord(r.Context(), spec)
		adminReply(w, http.StatusCreated, recs, err)
	})
	mux.HandleFunc("PATCH /_admin/records/{vendor}/{type}/{id}", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Values map[string]float64 `json:"values"`
		}
		if !decodeAdmin(w, r, &body) {
			return
		}
		v, err := store.ParseVendor(r.PathValue("vendor"))
		if err != nil {
			adminReply(w, 0, nil, err)
			return
		}
		rec, err := e.UpdateRecord(r.Context(), v, r.PathValue("type"), r.PathValue("id"), body.Values)
		adminReply(w, http.StatusOK, rec, err)
	})
	mux.HandleFunc("POST /_admin/records/whoop/{type}/{id}/score", func(w http.ResponseWriter, r *http.Request) {
		recs, err := e.ScoreRecord(r.Context(), r.PathValue("type"), r.PathValue("id"))
		adminReply(w, http.StatusOK, recs, err)
	})
	mux.HandleFunc("DELETE /_admin/records/{vendor}/{type}/{id}", func(w http.ResponseWriter, r *http.Request) {
		v, err := store.ParseVendor(r.PathValue("vendor"))
		if err == nil {
			err = e.DeleteRecord(r.Context(), v, r.PathValue("type"), r.PathValue("id"))
		}
		adminReply(w, http.StatusNoContent, nil, err)
	})
	mux.HandleFunc("POST /_admin/history", func(w http.ResponseWriter, r *http.Request) {
		var spec store.HistorySpec
		if !decodeAdmin(w, r, &spec) {
			return
		}
		res, err := e.GenerateHistory(r.Context(), spec)
		adminReply(w, http.StatusOK, res, err)
	})
	mux.HandleFunc("GET /_admin/faults", func(w http.ResponseWriter, _ *http.Request) {
		jsonhttp.Write(w, http.StatusOK, e.Faults())
	})
	mux.HandleFunc("PUT /_admin/faults", func(w http.ResponseWriter, r *http.Request) {
		var f store.Faults
		if !decodeAdmin(w, r, &f) {
			return
		}
		adminReply(w, http.StatusOK, f, e.SetFaults(f))
	})
	mux.HandleFunc("GET /_admin/counters", func(w http.ResponseWriter, _ *http.Request) {
		jsonhttp.Write(w, http.StatusOK, e.Counters())
	})
	mux.HandleFunc("POST /_admin/counters/reset", func(w http.ResponseWriter, _ *http.Request) {
		e.ResetCounters()
		w.WriteHeader(http.StatusNoContent)
	})
	type who struct {
		Vendor store.Vendor `json:"vendor"`
		User   string       `json:"user"`
	}
	parseWho := func(w http.ResponseWriter, r *http.Request) (who, bool) {
		var b who
		if !decodeAdmin(w, r, &b) {
			return b, false
		}
		if b.Vendor != "" {
			if _, err := store.ParseVendor(string(b.Vendor)); err != nil {
				adminReply(w, 0, nil, err)
				return b, false
			}
		}
		return b, true
	}
	mux.HandleFunc("POST /_admin/tokens/expire", func(w http.ResponseWriter, r *http.Request) {
		if b, ok := parseWho(w, r); ok {
			jsonhttp.Write(w, http.StatusOK, map[string]int{"expired": e.ExpireAccessTokens(b.Vendor, b.User)})
		}
	})
	mux.HandleFunc("POST /_admin/grants/revoke", func(w http.ResponseWriter, r *http.Request) {
		if b, ok := parseWho(w, r); ok {
			jsonhttp.Write(w, http.StatusOK, map[string]int{"revoked": e.RevokeGrants(b.Vendor, b.User)})
		}
	})
	mux.HandleFunc("PUT /_admin/webhooks/targets", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			WhoopURL string `json:"whoop_url"`
			OuraURL  string `json:"oura_url"`
		}
		if !decodeAdmin(w, r, &b) {
			return
		}
		adminReply(w, http.StatusNoContent, nil, e.SetWebhookTargets(b.WhoopURL, b.OuraURL))
	})
	mux.HandleFunc("POST /_admin/webhooks/wait", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			Timeout string `json:"timeout"`
		}
		if !decodeAdmin(w, r, &b) {
			return
		}
		d := 10 * time.Second
		if b.Timeout != "" {
			var err error
			if d, err = time.ParseDuration(b.Timeout); err != nil || d <= 0 || d > 5*time.Minute {
				adminReply(w, 0, nil, fmt.Errorf("%w: timeout must be a duration up to 5m", store.ErrInvalid))
				return
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		if err := e.WaitWebhooks(ctx); err != nil {
			jsonhttp.Write(w, http.StatusGatewayTimeout, map[string]any{"error": err.Error(), "pending": e.WebhooksPending()})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_admin/oura/verify", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			CallbackURL       string `json:"callback_url"`
			VerificationToken string `json:"verification_token"`
		}
		if !decodeAdmin(w, r, &b) {
			return
		}
		err := e.VerifyOuraCallback(r.Context(), b.CallbackURL, b.VerificationToken)
		if err != nil && !errors.Is(err, store.ErrInvalid) {
			jsonhttp.Write(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
			return
		}
		adminReply(w, http.StatusNoContent, nil, err)
	})
	mux.HandleFunc("POST /_admin/demo/tick", func(w http.ResponseWriter, r *http.Request) {
		res, err := e.DemoTick(r.Context())
		adminReply(w, http.StatusOK, res, err)
	})
	mux.HandleFunc("/_admin/", func(w http.ResponseWriter, _ *http.Request) {
		jsonhttp.Write(w, http.StatusNotFound, map[string]string{"error": "no such admin route (see the vendoremu package documentation)"})
	})
}

// decodeAdmin reads a JSON body strictly (unknown fields are typos worth
// reporting); an empty body decodes as {}.
func decodeAdmin(w http.ResponseWriter, r *http.Request, dst any) bool {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20+1))
	if err != nil {
		adminReply(w, 0, nil, fmt.Errorf("%w: read body: %w", store.ErrInvalid, err))
		return false
	}
	if len(b) > 1<<20 {
		jsonhttp.Write(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "body larger than 1 MiB"})
		return false
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return true
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		adminReply(w, 0, nil, fmt.Errorf("%w: json body: %w", store.ErrInvalid, err))
		return false
	}
	return true
}

func adminReply(w http.ResponseWriter, status int, v any, err error) {
	switch {
	case err == nil && status == http.StatusNoContent:
		w.WriteHeader(status)
	case err == nil:
		jsonhttp.Write(w, status, v)
	case errors.Is(err, store.ErrNotFound):
		jsonhttp.Write(w, http.StatusNotFound, map[string]string{"error": err.Error()})
	case errors.Is(err, store.ErrInvalid):
		jsonhttp.Write(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
	case errors.Is(err, store.ErrClosed):
		jsonhttp.Write(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		jsonhttp.Write(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	default:
		jsonhttp.Write(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
	}
}
