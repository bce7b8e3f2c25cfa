package store

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCountersAreKeptPerVendorAndSnapshotsDoNotAlias(t *testing.T) {
	t.Parallel()
	c := NewCounterSet()
	c.Count(Whoop, func(v *VendorCounters) { v.APICalls["GET /x"]++; v.TokenRefreshes++ })
	c.Count(Oura, func(v *VendorCounters) { v.Revocations++ })
	snap := c.Snapshot()
	require.EqualValues(t, 1, snap.Whoop.TokenRefreshes)
	require.Zero(t, snap.Oura.TokenRefreshes)
	require.EqualValues(t, 1, snap.Oura.Revocations)

	c.Count(Whoop, func(v *VendorCounters) { v.APICalls["GET /x"]++ })
	require.EqualValues(t, 1, snap.Whoop.APICalls["GET /x"], "a snapshot must not see later counts")
	require.EqualValues(t, 2, c.Snapshot().Whoop.APICalls["GET /x"])

	c.Reset()
	require.Zero(t, c.Snapshot().Whoop.APICalls["GET /x"])
}
