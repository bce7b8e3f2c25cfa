// Package whoop serves the emulated WHOOP developer API v2 (profile, body
// measurements, cycles, sleeps, recoveries, workouts, revoke) from the
// users' records in store.State. Counting, latency, rate limits, injected
// faults, bearer authentication and scope checks happen in the Guard the
// caller wraps every handler with.
package whoop

import (
	"net/http"
	"strconv"
	"time"

	"github.com/biobridge/bridge/emulator/internal/jsonhttp"
	"github.com/biobridge/bridge/emulator/internal/store"
)

// Guard wraps a data endpoint needing scope ("" none) with the emulator's
// per-request checks and resolves the grant and its user.
type Guard func(scope string, h store.APIHandler) http.Handler

// API is the WHOOP data API over one State.
type API struct {
	st       *store.State
	counters *store.CounterSet
}

// New returns the WHOOP API over st.
func New(st *store.State, counters *store.CounterSet) *API { return &API{st: st, counters: counters} }

// Routes registers the WHOOP developer API under /whoop/developer.
func (a *API) Routes(mux *http.ServeMux, guard Guard) {
	const p = "/whoop/developer/v2"
	mux.Handle("GET "+p+"/user/profile/basic", guard("read:profile", a.profile))
	mux.Handle("GET "+p+"/user/measurement/body", guard("read:body_measurement", a.body))
	mux.Handle("DELETE "+p+"/user/access", guard("", a.revoke))
	mux.Handle("GET "+p+"/activity/sleep/{id}", guard("read:sleep", a.sleepByID))
	mux.Handle("GET "+p+"/activity/sleep", guard("read:sleep", a.collection(collSleep)))
	mux.Handle("GET "+p+"/activity/workout/{id}", guard("read:workout", a.workoutByID))
	mux.Handle("GET "+p+"/activity/workout", guard("read:workout", a.collection(collWorkout)))
	mux.Handle("GET "+p+"/cycle/{id}", guard("read:cycles", a.cycleByID))
	mux.Handle("GET "+p+"/cycle/{id}/recovery", guard("read:recovery", a.cycleRecovery))
	mux.Handle("GET "+p+"/cycle/{id}/sleep", guard("read:sleep", a.cycleSleep))
	mux.Handle("GET "+p+"/cycle", guard("read:cycles", a.collection(collCycle)))
	mux.Handle("GET "+p+"/recovery", guard("read:recovery", a.collection(collRecovery)))
	mux.Handle(p+"/", guard("", func(w http.ResponseWriter, _ *http.Request, _ *store.Grant, _ *store.Person) {
		Error(w, http.StatusNotFound, "no such endpoint")
	}))
}

// Error writes WHOOP's error body.
func Error(w http.ResponseWriter, status int, msg string) {
	jsonhttp.Write(w, status, map[string]string{"error": msg})
}

func (a *API) profile(w http.ResponseWriter, _ *http.Request, _ *store.Grant, u *store.Person) {
	jsonhttp.Write(w, http.StatusOK, map[string]any{
		"user_id": u.WhoopID, "email": u.Email, "first_name": u.FirstName, "last_name": u.LastName,
	})
}

func (a *API) body(w http.ResponseWriter, _ *http.Request, _ *store.Grant, u *store.Person) {
	b := u.Base
	jsonhttp.Write(w, http.StatusOK, map[string]any{
		"height_meter": b.HeightM, "weight_kilogram": b.WeightKg, "max_heart_rate": int(b.MaxHR),
	})
}

func (a *API) revoke(w http.ResponseWriter, _ *http.Request, g *store.Grant, _ *store.Person) {
	a.st.Mu.Lock()
	g.Revoked = true
	a.st.Mu.Unlock()
	a.counters.Count(store.Whoop, func(v *store.VendorCounters) { v.Revocations++ })
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) sleepByID(w http.ResponseWriter, r *http.Request, _ *store.Grant, u *store.Person) {
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	s, ok := u.Sleeps[r.PathValue("id")]
	if !ok {
		Error(w, http.StatusNotFound, "sleep not found")
		return
	}
	jsonhttp.Write(w, http.StatusOK, s)
}

func (a *API) workoutByID(w http.ResponseWriter, r *http.Request, _ *store.Grant, u *store.Person) {
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	wo, ok := u.Workouts[r.PathValue("id")]
	if !ok {
		Error(w, http.StatusNotFound, "workout not found")
		return
	}
	jsonhttp.Write(w, http.StatusOK, wo)
}

func (a *API) cycleFromPath(w http.ResponseWriter, r *http.Request, u *store.Person) (*store.WhoopCycle, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		Error(w, http.StatusBadRequest, "cycle id must be an integer")
		return nil, false
	}
	c, ok := u.Cycles[id]
	if !ok {
		Error(w, http.StatusNotFound, "cycle not found")
		return nil, false
	}
	return c, true
}

func (a *API) cycleByID(w http.ResponseWriter, r *http.Request, _ *store.Grant, u *store.Person) {
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	if c, ok := a.cycleFromPath(w, r, u); ok {
		jsonhttp.Write(w, http.StatusOK, c)
	}
}

// cycleRecovery is the only way to read a recovery by reference in v2:
// webhooks name the sleep, the sleep names the cycle, the cycle has the
// recovery.
func (a *API) cycleRecovery(w http.ResponseWriter, r *http.Request, _ *store.Grant, u *store.Person) {
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	c, ok := a.cycleFromPath(w, r, u)
	if !ok {
		return
	}
	rec, ok := u.Recoveries[c.ID]
	if !ok {
		Error(w, http.StatusNotFound, "no recovery for this cycle")
		return
	}
	jsonhttp.Write(w, http.StatusOK, rec)
}

func (a *API) cycleSleep(w http.ResponseWriter, r *http.Request, _ *store.Grant, u *store.Person) {
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	c, ok := a.cycleFromPath(w, r, u)
	if !ok {
		return
	}
	for _, s := range u.Sleeps {
		if s.CycleID == c.ID && !s.Nap {
			jsonhttp.Write(w, http.StatusOK, s)
			return
		}
	}
	Error(w, http.StatusNotFound, "no sleep for this cycle")
}

type whoopColl int

const (
	collSleep whoopColl = iota
	collWorkout
	collCycle
	collRecovery
)

// collection serves a v2 collection: newest first, limit <= 25 (default
// 10), start inclusive, end exclusive (default now), paged by nextToken.
func (a *API) collection(kind whoopColl) store.APIHandler {
	return func(w http.ResponseWriter, r *http.Request, _ *store.Grant, u *store.Person) {
		q := r.URL.Query()
		limit := 10
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 25 {
				Error(w, http.StatusBadRequest, "limit must be an integer between 1 and 25")
				return
			}
			limit = n
		}
		var start, end time.Time
		if s := q.Get("start"); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				Error(w, http.StatusBadRequest, "start must be an ISO 8601 date-time")
				return
			}
			start = t
		}
		end = a.st.Now()
		if s := q.Get("end"); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				Error(w, http.StatusBadRequest, "end must be an ISO 8601 date-time")
				return
			}
			end = t
		}
		a.st.Mu.Lock()
		defer a.st.Mu.Unlock()
		now := a.st.Now()
		var items []store.PageItem
		// A record is in range when it overlaps [start, end): "occurred after
		// or during start", "intersects or ended before end".
		add := func(s time.Time, en *time.Time, id string, v any) {
			recEnd := now
			if en != nil {
				recEnd = *en
			}
			if !start.IsZero() && recEnd.Before(start) {
				return
			}
			if !s.Before(end) {
				return
			}
			items = append(items, store.PageItem{Key: s, ID: id, V: v})
		}
		switch kind {
		case collSleep:
			for _, s := range u.Sleeps {
				add(s.Start, &s.End, s.ID, s)
			}
		case collWorkout:
			for _, wo := range u.Workouts {
				add(wo.Start, &wo.End, wo.ID, wo)
			}
		case collCycle:
			for _, c := range u.Cycles {
				add(c.Start, c.End, strconv.FormatInt(c.ID, 10), c)
			}
		case collRecovery:
			for _, rec := range u.Recoveries {
				if c, ok := u.Cycles[rec.CycleID]; ok {
					add(c.Start, c.End, strconv.FormatInt(c.ID, 10), rec)
				}
			}
		}
		page, next, err := store.Paginate(items, true, q.Get("nextToken"), limit)
		if err != nil {
			Error(w, http.StatusBadRequest, "invalid nextToken")
			return
		}
		records := make([]any, 0, len(page))
		for _, it := range page {
			records = append(records, it.V)
		}
		resp := map[string]any{"records": records, "next_token": nil}
		if next != "" {
			resp["next_token"] = next
		}
		jsonhttp.Write(w, http.StatusOK, resp)
	}
}
