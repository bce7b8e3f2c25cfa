// Package testrepo gives the check's tests a private copy of the
// repository's deployment files, so a test can break one file and see the
// check fail, without touching the real tree.
package testrepo

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Root returns the real repository root (four levels above this package).
func Root(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := wd; filepath.Dir(d) != d; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "deploy")); err == nil {
				return d
			}
		}
	}
	t.Fatalf("no repository around %s", wd)
	return ""
}

// Copy makes a temporary repository with deploy/, docs/, go.work and the
// services' cmd directories (empty: the checks only look for them), and
// returns its root.
func Copy(t testing.TB) string {
	t.Helper()
	src := Root(t)
	dst := t.TempDir()
	copyTree(t, filepath.Join(src, "deploy"), filepath.Join(dst, "deploy"), func(rel string) bool {
		// The check module itself is not needed, only its go.mod.
		return !strings.HasPrefix(rel, "check/") || rel == "check/go.mod"
	})
	copyTree(t, filepath.Join(src, "docs"), filepath.Join(dst, "docs"), nil)
	for _, f := range []string{"go.work", "go.work.sum"} {
		if data, err := os.ReadFile(filepath.Join(src, f)); err == nil {
			write(t, filepath.Join(dst, f), data)
		}
	}
	cmds, _ := filepath.Glob(filepath.Join(src, "services", "*", "cmd", "*"))
	for _, c := range cmds {
		rel, _ := filepath.Rel(src, c)
		if err := os.MkdirAll(filepath.Join(dst, rel), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// Replace replaces the first occurrence of old in the file at root/rel,
// failing the test when old is not there (a fixture that no longer applies
// must not pass silently).
func Replace(t testing.TB, root, rel, old, new string) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(rel))
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s does not contain %q", rel, old)
	}
	write(t, p, []byte(strings.Replace(string(data), old, new, 1)))
}

// Append adds text at the end of the file at root/rel.
func Append(t testing.TB, root, rel, text string) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(rel))
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	write(t, p, append(data, []byte(text)...))
}

func copyTree(t testing.TB, src, dst string, keep func(rel string) bool) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if keep != nil && !keep(filepath.ToSlash(rel)) {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func write(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
