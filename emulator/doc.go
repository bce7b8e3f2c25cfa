// Package emulator emulates the WHOOP v2 and Oura v2 APIs closely enough to
// run the suite's real code paths without the vendors: OAuth with
// single-use (rotating) refresh tokens, the data endpoints the ingest
// service reads, signed webhooks delivered the way each vendor delivers
// them, rate limits with the vendors' headers, and injectable faults. The
// real vendors cannot be made to rotate a token, drop a webhook or throttle
// on demand; the emulator can, deterministically given a seed.
//
// One handler serves each vendor under a prefix with the vendor's own paths,
// so a service configured with WHOOP_API_URL=http://127.0.0.1:8090/whoop and
// OURA_API_URL=http://127.0.0.1:8090/oura appends exactly what it would
// append to the real hosts:
//
//	WHOOP  GET  /whoop/oauth/oauth2/auth            authorize (auto-approves, see below)
//	       POST /whoop/oauth/oauth2/token           authorization_code | refresh_token
//	       GET  /whoop/developer/v2/user/profile/basic
//	       GET  /whoop/developer/v2/user/measurement/body
//	       DELETE /whoop/developer/v2/user/access   revoke the grant
//	       GET  /whoop/developer/v2/activity/sleep/{id}, /activity/workout/{id}
//	       GET  /whoop/developer/v2/cycle/{id}, /cycle/{id}/recovery, /cycle/{id}/sleep
//	       GET  /whoop/developer/v2/cycle, /recovery, /activity/sleep, /activity/workout
//	            ?limit (<=25, default 10)&start&end&nextToken -> {records, next_token}
//	Oura   GET  /oura/oauth/authorize               (OURA_AUTHORIZE_URL)
//	       POST /oura/oauth/token
//	       GET|POST /oura/oauth/revoke?access_token=
//	       GET  /oura/v2/usercollection/personal_info
//	       GET  /oura/v2/usercollection/{data_type}[/{id}]
//	            ?start_date&end_date | start_datetime&end_datetime (heartrate) &next_token
//	            -> {data, next_token}
//	       POST|GET /oura/v2/webhook/subscription, GET|PUT|DELETE .../{id},
//	       PUT  /oura/v2/webhook/subscription/renew/{id}   (x-client-id, x-client-secret)
//
// Authorize auto-approves the emulated user named by the login_hint query
// parameter (created on first use), or the first user added (a user named
// "demo" when there is none), and redirects to redirect_uri with code and
// the caller's state. emu_deny=1 makes the "user" deny instead. PKCE (S256
// or plain) is verified when code_challenge was sent. WHOOP requires a
// state of at least 8 characters and issues a refresh token only with the
// offline scope.
//
// Webhooks go to Config.WhoopWebhookURL (WHOOP's app-level URL) and, for
// Oura, to every matching unexpired subscription, or to
// Config.OuraWebhookURL when none matches. They are signed exactly as the
// vendors sign them (see WhoopSignature and OuraSignature), delivered by a
// bounded worker pool and retried on non-2xx answers and timeouts on a
// scaled-down schedule.
//
// The admin API under /_admin/ (documented on the routes in
// internal/admin and in README.md) creates users, records and history, sets
// faults and reports counters; every admin operation is also a method for
// Go tests.
//
// This package is the facade: Emulator, Config, starting, serving and
// closing, the per-request guard of the data APIs (counting, latency, rate
// limits, injected faults, authentication, scope), the Go API that creates,
// updates, scores and deletes records and plans their webhooks, and history
// and demo. The rest is in internal packages: store (State: the one lock,
// the seeded random source, the clock, users and records, Oura
// subscriptions, OAuth grants and tokens; plus vendor names, counters,
// faults, rate-limit windows and the API's data types, re-exported here as
// aliases), oauth, whoop and oura (the vendors' HTTP APIs over store.State),
// webhooks (delivery pool and signatures), admin (the /_admin/ routes,
// written against an interface this package implements) and jsonhttp (JSON
// answers).
package emulator
