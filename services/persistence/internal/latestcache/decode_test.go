package latestcache

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// The direct path decodes what encode writes exactly as encoding/json.
func TestDecodeEntryMatchesEncodingJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	strs := []string{"", "r-1", "Apple Watch", "com.apple.health.7F2A", "é", "a\"b", "tab\there", "<&>", "\u2028"}
	floats := []float64{0, -0.5, 1, 62.25, 1e21, 1e-7, math.MaxFloat64, math.SmallestNonzeroFloat64, -123456.789}
	for range 2000 {
		e := entry{
			M: strs[r.IntN(len(strs))], V: floats[r.IntN(len(floats))] * r.Float64(), T: r.Int64() - r.Int64(),
			ST: r.Int64N(3) * r.Int64(), S: r.Int32() - r.Int32(), R: strs[r.IntN(len(strs))], Q: r.Int32(),
			DN: strs[r.IntN(len(strs))], DM: strs[r.IntN(len(strs))], DB: strs[r.IntN(len(strs))],
		}
		b, err := json.Marshal(e)
		require.NoError(t, err)
		got, err := decodeEntry(string(b))
		require.NoError(t, err)
		require.Equal(t, e, got, string(b))
	}
	// Plain entries take the direct path.
	b, err := json.Marshal(entry{V: 61.5, T: 1764547200000000, S: 2, R: "r", Q: 1, DN: "ring"})
	require.NoError(t, err)
	_, ok := decodeEntryFast(string(b))
	require.True(t, ok)
}

// Whatever the direct path accepts, encoding/json accepts with the same
// result; the rest is left to encoding/json.
func FuzzDecodeEntryFast(f *testing.F) {
	for _, s := range []string{`{}`, `{"v":1,"t":2,"s":3,"r":"x","q":4}`, `{"m":"hr","v":-0.5e-3,"t":-1,"st":7,"s":0,"r":"","q":0,"dn":"a","dm":"b","db":"c"}`,
		`{"v":01}`, `{"v":1.}`, `{"t":1e3}`, `{"s":2147483648}`, `{"V":1}`, `{"v":1,}`, `{"r":"\u00e9"}`, `{"v":1} `, `{"v":null}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := decodeEntryFast(s)
		if !ok {
			return
		}
		var want entry
		if err := json.Unmarshal([]byte(s), &want); err != nil {
			t.Fatalf("direct path accepted %q, encoding/json: %v", s, err)
		}
		if got != want && !(math.IsNaN(got.V) && math.IsNaN(want.V)) {
			t.Fatalf("%q: direct path %+v, encoding/json %+v", s, got, want)
		}
	})
}
