package truncate_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"

	"github.com/biobridge/bridge/pkg/truncate"
)

func TestUTF8(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		n    int
		want string
	}{
		{"short", "abc", 5, "abc"},
		{"exact", "abcde", 5, "abcde"},
		{"ascii cut", "abcdef", 5, "abcde"},
		{"cut inside a two-byte rune", "abcdé", 5, "abcd"},
		{"cut after a two-byte rune", "abcé", 5, "abcé"},
		{"cut inside a four-byte rune", "ab😀", 5, "ab"},
		{"zero", "abc", 0, ""},
		{"negative", "abc", -1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, truncate.UTF8(tt.in, tt.n))
		})
	}
}

func FuzzUTF8(f *testing.F) {
	f.Add("abcdé", 5)
	f.Add(strings.Repeat("😀", 10), 7)
	f.Add("\xff\xfe", 1)
	f.Fuzz(func(t *testing.T, s string, n int) {
		got := truncate.UTF8(s, n)
		if len(got) > max(n, 0) && len(got) != len(s) {
			t.Fatalf("UTF8(%q, %d) = %q: longer than %d", s, n, got, n)
		}
		if !strings.HasPrefix(s, got) {
			t.Fatalf("UTF8(%q, %d) = %q: not a prefix", s, n, got)
		}
		if len(s) > n && !utf8.ValidString(got) {
			t.Fatalf("UTF8(%q, %d) = %q: not valid UTF-8", s, n, got)
		}
	})
}
