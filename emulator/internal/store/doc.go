// Package store holds the emulator's state that every emulated vendor
// shares: State (the one lock, the seeded random source, the clock, the
// faults in force, the rate-limit windows, the users with their WHOOP and
// Oura records, and the OAuth grants, codes and tokens), the records' types
// as the vendors serve them, the vendor names, the per-vendor counters
// (what each emulated vendor saw and did, reported by the admin API), and
// the Go API's data types and errors. The Oura webhook subscriptions still
// live on emulator.Emulator in the parent package, guarded by State.Mu.
// Only State and CounterSet carry a lock; CounterSet's is always taken
// last.
package store
