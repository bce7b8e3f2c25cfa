package emulator

import "github.com/biobridge/bridge/emulator/internal/store"

// VendorCounters count what one emulated vendor saw and did.
type VendorCounters = store.VendorCounters

// Counters is a snapshot of both vendors' counters.
type Counters = store.Counters

func (e *Emulator) count(v Vendor, f func(*VendorCounters)) { e.counters.Count(v, f) }

func (e *Emulator) countLockedMax(v Vendor, n int) {
	e.count(v, func(c *VendorCounters) { c.MaxRequestsInWindow = max(c.MaxRequestsInWindow, int64(n)) })
}

// Counters returns a snapshot.
func (e *Emulator) Counters() Counters {
	out := e.counters.Snapshot()
	out.WebhooksPending = e.hooks.Pending()
	return out
}

// ResetCounters zeroes every counter (including the observed window
// maxima) so a test can measure one phase.
func (e *Emulator) ResetCounters() {
	e.st.Mu.Lock()
	e.st.Rate.WhoopSeen = store.Slider{}
	e.st.Rate.OuraSeen = map[string]*store.Slider{}
	e.st.Mu.Unlock()
	e.counters.Reset()
}
