package buildinfo

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromSettings(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		settings []debug.BuildSetting
		want     string
	}{
		{"no vcs information", nil, "devel"},
		{"clean tree", []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "false"}}, "0123456789ab"},
		{"modified tree", []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}}, "0123456789ab-dirty"},
		{"short revision", []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}}, "abc"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := fromSettings(tt.settings); got != tt.want {
				t.Fatalf("fromSettings = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestLinkerStampsTheVersion builds a program with the -X flag the release
// builds pass (scripts/images.sh, deploy/docker/Dockerfile), so renaming the
// variable cannot silently leave every image unversioned.
func TestLinkerStampsTheVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	bin := filepath.Join(t.TempDir(), "printversion")
	build := exec.Command("go", "build", "-o", bin, "-ldflags", "-X "+VersionSymbol+"=v9.8.7-test", "./testdata/printversion")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "v9.8.7-test" {
		t.Fatalf("version = %q, want the stamped v9.8.7-test", got)
	}
}
