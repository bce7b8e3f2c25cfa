// Package images knows the names `make images` gives the images
// (scripts/images.sh), so the checks can hold compose and the Kubernetes
// manifests to exactly those names: one image per services/<svc>/cmd/<svc>,
// named <IMAGE_REPO>/<svc>:<IMAGE_TAG> with the defaults from
// deploy/docker/images.env.
package images

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// EnvPath is the file holding IMAGE_REPO and IMAGE_TAG, inside the repository.
const EnvPath = "deploy/docker/images.env"

// Set is what `make images` builds with the default settings.
type Set struct {
	Repo, Tag string
	// Services are the built services, sorted.
	Services []string
}

// Name is the image of svc.
func (s Set) Name(svc string) string { return Ref(s.Repo, svc, s.Tag) }

// Ref is the image `make images IMAGE_REPO=repo IMAGE_TAG=tag` gives svc.
func Ref(repo, svc, tag string) string { return repo + "/" + svc + ":" + tag }

// Load reads the image set of the repository at root.
func Load(root string) (Set, error) {
	data, err := os.ReadFile(filepath.Join(root, EnvPath))
	if err != nil {
		return Set{}, err
	}
	vars, err := parseEnv(data)
	if err != nil {
		return Set{}, fmt.Errorf("%s: %w", EnvPath, err)
	}
	s := Set{Repo: vars["IMAGE_REPO"], Tag: vars["IMAGE_TAG"]}
	if s.Repo == "" || s.Tag == "" {
		return Set{}, fmt.Errorf("%s: IMAGE_REPO and IMAGE_TAG must both be set", EnvPath)
	}
	cmds, err := filepath.Glob(filepath.Join(root, "services", "*", "cmd", "*"))
	if err != nil {
		return Set{}, err
	}
	for _, c := range cmds {
		svc := filepath.Base(c)
		if st, err := os.Stat(c); err == nil && st.IsDir() && svc == filepath.Base(filepath.Dir(filepath.Dir(c))) {
			s.Services = append(s.Services, svc)
		}
	}
	sort.Strings(s.Services)
	if len(s.Services) == 0 {
		return Set{}, errors.New("no services/<svc>/cmd/<svc> directory")
	}
	return s, nil
}

// parseEnv reads KEY=VALUE lines; blank lines and # comments are skipped.
func parseEnv(data []byte) (map[string]string, error) {
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(v, " \t\"'$") {
			return nil, fmt.Errorf("line %d: want KEY=VALUE without quotes, spaces or $, got %q", n, line)
		}
		vars[k] = v
	}
	return vars, sc.Err()
}

// CheckRelease checks that images (service → image) are what one release
// build makes: every image <repo>/<service>:<tag>, with the same repo and
// tag for all of them (`make images IMAGE_REPO=<repo> IMAGE_TAG=<tag>`).
func CheckRelease(images map[string]string) error {
	var errs []error
	var repo, tag, first string
	svcs := make([]string, 0, len(images))
	for svc := range images {
		svcs = append(svcs, svc)
	}
	sort.Strings(svcs)
	for _, svc := range svcs {
		img := images[svc]
		name, t, ok := strings.Cut(img[strings.LastIndex(img, "/")+1:], ":")
		r := strings.TrimSuffix(img[:max(strings.LastIndex(img, "/"), 0)], "/")
		if !ok || name != svc || r == "" || t == "" {
			errs = append(errs, fmt.Errorf("%s: image %q is not <repo>/%s:<tag>, what make images builds", svc, img, svc))
			continue
		}
		if first == "" {
			repo, tag, first = r, t, svc
		} else if r != repo || t != tag {
			errs = append(errs, fmt.Errorf("%s: image %q is not from the same build as %s's %q (make images gives every service one IMAGE_REPO and IMAGE_TAG)", svc, img, first, Ref(repo, first, tag)))
		}
	}
	return errors.Join(errs...)
}
