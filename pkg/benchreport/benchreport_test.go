package benchreport

import (
	"testing"
)

func TestRatiosAreBiggerIsBetter(t *testing.T) {
	t.Parallel()
	if r := Higher("x", "ops/s", 200, 100, ""); r.Ratio != 2 {
		t.Fatalf("throughput ratio = %v, want 2", r.Ratio)
	}
	if r := Lower("y", "ms", 5, 20, ""); r.Ratio != 4 {
		t.Fatalf("latency ratio = %v, want 4", r.Ratio)
	}
	if r := Lower("z", "ms", 0, 20, ""); r.Ratio != 0 {
		t.Fatalf("zero value must not divide: %v", r.Ratio)
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := Save(dir, "persistence", []Result{Higher("a", "ops/s", 3, 1, "n")}); err != nil {
		t.Fatal(err)
	}
	groups, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 1 || groups[0].Group != "persistence" || groups[0].Results[0].Ratio != 3 {
		t.Fatalf("round trip = %+v", groups)
	}
}
