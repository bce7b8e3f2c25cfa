package emulator

import (
	"net/http"

	"github.com/biobridge/bridge/emulator/internal/admin"
	"github.com/biobridge/bridge/emulator/internal/store"
)

// routes builds the emulator's single handler.
func (e *Emulator) routes() http.Handler {
	mux := http.NewServeMux()
	e.oauth.Routes(mux)
	e.whoop.Routes(mux, func(scope string, h store.APIHandler) http.Handler { return e.api(Whoop, scope, h) })
	e.oura.Routes(mux, func(scope string, h store.APIHandler) http.Handler { return e.api(Oura, scope, h) })
	admin.Routes(mux, adminAPI{e})
	return mux
}

// adminAPI is the facade as the admin routes see it.
type adminAPI struct{ *Emulator }

// WebhooksPending is how many deliveries are queued, in flight, held or
// waiting for a retry.
func (a adminAPI) WebhooksPending() int64 { return a.hooks.Pending() }
