package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/benchreport"
)

// TestRegenerationKeepsTheHandWrittenPart: the profile summaries and the
// plot link follow KeepMarker and must survive `make bench`.
func TestRegenerationKeepsTheHandWrittenPart(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	require.NoError(t, benchreport.Save(in, "g", []benchreport.Result{benchreport.Higher("g.rate", "ops/s", 2, 1, "n")}))
	md, js := filepath.Join(dir, "B.md"), filepath.Join(dir, "b.json")
	hand := "\n## Where the time goes\n\nby hand ![plot](docs/bench/concurrency.svg)\n"
	require.NoError(t, os.WriteFile(md, []byte("# old generated part\n| stale | row |\n\n"+KeepMarker+hand), 0o644))

	for range 2 {
		require.NoError(t, run(context.Background(), []string{"benchmerge", "-in", in, "-md", md, "-json", js}, io.Discard))
		b, err := os.ReadFile(md)
		require.NoError(t, err)
		got := string(b)
		require.NotContains(t, got, "stale")
		require.Contains(t, got, "| g.rate | 2 | ops/s | 1 | 2.00 | n |")
		require.True(t, strings.HasSuffix(got, KeepMarker+hand), got)
		require.Equal(t, 1, strings.Count(got, KeepMarker))
	}

	// Without the marker nothing is kept, and a missing file is no error.
	require.NoError(t, os.Remove(md))
	require.NoError(t, run(context.Background(), []string{"benchmerge", "-in", in, "-md", md, "-json", js}, io.Discard))
	b, err := os.ReadFile(md)
	require.NoError(t, err)
	require.NotContains(t, string(b), KeepMarker)
}
