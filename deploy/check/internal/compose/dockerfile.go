package compose

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// instruction is one Dockerfile instruction with continuation lines joined.
type instruction struct {
	Cmd  string
	Args string
	Line int
}

func parseDockerfile(data []byte) []instruction {
	var out []instruction
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args), Line: start})
		cur.Reset()
	}
	return out
}

// Dockerfile checks what the images promise: one Dockerfile for every
// service (build arg SERVICE), the same file tree as `make images`
// (scripts/images.sh rootfs), a static binary (CGO_ENABLED=0), a final
// stage without a shell (distroless static or scratch) running as a
// non-root user, and a HEALTHCHECK through the binary's healthcheck mode.
// It also checks that the Dockerfile's ignore file keeps every module of
// go.work in the build context.
func Dockerfile(dockerfile, ignore []byte, goWork []byte) error {
	var errs []error
	ins := parseDockerfile(dockerfile)
	lastFrom := -1
	for i, in := range ins {
		if in.Cmd == "FROM" {
			lastFrom = i
		}
	}
	if lastFrom < 0 {
		return errors.New("Dockerfile: no FROM")
	}
	has := func(from int, cmd, substr string) bool {
		for _, in := range ins[from:] {
			if in.Cmd == cmd && strings.Contains(in.Args, substr) {
				return true
			}
		}
		return false
	}
	if !has(0, "ARG", "SERVICE") {
		errs = append(errs, errors.New("Dockerfile: no ARG SERVICE"))
	}
	if !has(0, "RUN", "scripts/images.sh rootfs") {
		errs = append(errs, errors.New("Dockerfile: the build stage must lay out the image with scripts/images.sh rootfs (the file tree make images builds)"))
	}
	if !has(0, "ENV", "CGO_ENABLED=0") && !has(0, "RUN", "CGO_ENABLED=0") {
		errs = append(errs, errors.New("Dockerfile: the build does not set CGO_ENABLED=0 (static binary)"))
	}
	final := ins[lastFrom].Args
	if !strings.Contains(final, "distroless/static") && !strings.HasPrefix(final, "scratch") {
		errs = append(errs, fmt.Errorf("Dockerfile line %d: final stage %q is not distroless/static or scratch", ins[lastFrom].Line, final))
	}
	user := ""
	for _, in := range ins[lastFrom:] {
		if in.Cmd == "USER" {
			user = in.Args
		}
	}
	if uid, _, _ := strings.Cut(user, ":"); user == "" || uid == "0" || uid == "root" {
		errs = append(errs, errors.New("Dockerfile: the final stage must set a non-root USER"))
	}
	if !has(lastFrom, "HEALTHCHECK", "healthcheck") {
		errs = append(errs, errors.New("Dockerfile: the final stage needs a HEALTHCHECK running the binary's healthcheck mode"))
	}
	if !has(lastFrom, "ENTRYPOINT", "") {
		errs = append(errs, errors.New("Dockerfile: the final stage has no ENTRYPOINT"))
	}
	needed := []string{"go.work", "go.work.sum"}
	for _, line := range strings.Split(string(goWork), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "./") {
			needed = append(needed, filepath.Clean(strings.Fields(line)[0]), filepath.Join(filepath.Clean(strings.Fields(line)[0]), "go.mod"))
		}
	}
	for _, p := range needed {
		if pat := ignored(ignore, p); pat != "" {
			errs = append(errs, fmt.Errorf("Dockerfile.dockerignore: %q excludes %s, which go.work needs", pat, p))
		}
	}
	return errors.Join(errs...)
}

// ignored reports the pattern of a .dockerignore that excludes path or one
// of its parents ("" when kept). Later "!" patterns re-include, as Docker
// does.
func ignored(ignore []byte, path string) string {
	parts := strings.Split(filepath.ToSlash(path), "/")
	result := ""
	for _, raw := range strings.Split(string(ignore), "\n") {
		pat := strings.TrimSpace(raw)
		if pat == "" || strings.HasPrefix(pat, "#") {
			continue
		}
		neg := strings.HasPrefix(pat, "!")
		pat = strings.TrimPrefix(strings.TrimPrefix(pat, "!"), "/")
		for i := 1; i <= len(parts); i++ {
			prefix := strings.Join(parts[:i], "/")
			if match(pat, prefix) {
				if neg {
					result = ""
				} else {
					result = pat
				}
				break
			}
		}
	}
	return result
}

// match implements the subset of Docker's patterns the ignore file uses:
// filepath.Match per segment, with a leading "**/" matching any depth.
func match(pat, path string) bool {
	if rest, ok := strings.CutPrefix(pat, "**/"); ok {
		segs := strings.Split(path, "/")
		for i := range segs {
			if ok, _ := filepath.Match(rest, strings.Join(segs[i:], "/")); ok {
				return true
			}
		}
		return false
	}
	ok, _ := filepath.Match(pat, path)
	return ok
}
