package images

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/biobridge/bridge/deploy/check/internal/testrepo"
)

// TestLoadMatchesTheBuildScript: the names the checks enforce are the names
// scripts/images.sh gives the images, so a change to either cannot make
// compose and Kubernetes reference images the build does not make.
func TestLoadMatchesTheBuildScript(t *testing.T) {
	t.Parallel()
	root := testrepo.Root(t)
	s, err := Load(root)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("scripts/images.sh", "names")
	cmd.Dir = root
	cmd.Env = []string{"PATH=/usr/bin:/bin:/usr/local/bin"} // no IMAGE_REPO/IMAGE_TAG from the caller
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/images.sh names: %v", err)
	}
	var want []string
	for _, svc := range s.Services {
		want = append(want, svc+" "+s.Name(svc))
	}
	if got := strings.TrimSpace(string(out)); got != strings.Join(want, "\n") {
		t.Fatalf("scripts/images.sh names:\n%s\nthe checks expect:\n%s", got, strings.Join(want, "\n"))
	}
}

func TestCheckRelease(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		images  map[string]string
		wantErr string
	}{
		{"one release", map[string]string{"gateway": "registry.example.com/biobridge/gateway:1.0.0", "ingest": "registry.example.com/biobridge/ingest:1.0.0"}, ""},
		{"other tag", map[string]string{"gateway": "registry.example.com/biobridge/gateway:1.0.0", "ingest": "registry.example.com/biobridge/ingest:1.0.1"}, "not from the same build"},
		{"other repository", map[string]string{"gateway": "registry.example.com/biobridge/gateway:1.0.0", "ingest": "registry.example.com/bb/ingest:1.0.0"}, "not from the same build"},
		{"other image name", map[string]string{"ingest": "registry.example.com/biobridge/ingester:1.0.0"}, "is not <repo>/ingest:<tag>"},
		{"no tag", map[string]string{"ingest": "registry.example.com/biobridge/ingest"}, "is not <repo>/ingest:<tag>"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := CheckRelease(tt.images)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("CheckRelease = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}
