package config_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/config"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLoaderValues(t *testing.T) {
	t.Parallel()
	l := config.New(env(map[string]string{
		"NAME":     " svc ",
		"REQ":      "x",
		"N":        "42",
		"D":        "1500ms",
		"B":        "true",
		"LIST":     " a, ,b ,, c",
		"KEY":      "secret-bytes",
		"EMPTYLST": " , ",
	}))
	assert.Equal(t, "svc", l.String("NAME", "def"))
	assert.Equal(t, "def", l.String("UNSET", "def"))
	assert.Equal(t, "x", l.Required("REQ"))
	assert.Equal(t, 42, l.Int("N", 1, 1, 100))
	assert.Equal(t, 7, l.Int("UNSET", 7, 1, 100))
	assert.Equal(t, 1500*time.Millisecond, l.Duration("D", time.Second))
	assert.Equal(t, time.Second, l.Duration("UNSET", time.Second))
	assert.True(t, l.Bool("B", false))
	assert.True(t, l.Bool("UNSET", true))
	assert.Equal(t, []string{"a", "b", "c"}, l.List("LIST", nil))
	assert.Equal(t, []string{"d"}, l.List("EMPTYLST", []string{"d"}))
	assert.Equal(t, []byte("secret-bytes"), l.Bytes("KEY"))
	assert.Nil(t, l.Bytes("UNSET"))
	require.NoError(t, l.Err())
}

func TestLoaderCollectsEveryError(t *testing.T) {
	t.Parallel()
	l := config.New(env(map[string]string{
		"MAX_CONCURRENT_WEBHOOKS": "0",
		"PORT":                    "eighty",
		"TIMEOUT":                 "soon",
		"NEG":                     "-1s",
		"FLAG":                    "maybe",
		"SHORT":                   "abc",
	}))
	l.Required("POSTGRES_URL")
	assert.Equal(t, 50, l.Int("MAX_CONCURRENT_WEBHOOKS", 50, 1, 1000), "default returned on error")
	l.Int("PORT", 8080, 1, 65535)
	l.Duration("TIMEOUT", time.Second)
	l.Duration("NEG", time.Second)
	l.Bool("FLAG", false)
	l.Check("SHORT", len(l.Bytes("SHORT")) >= 32, "must be at least 32 bytes")
	l.Check("OK", true, "never reported")

	err := l.Err()
	require.Error(t, err)
	lines := strings.Split(err.Error(), "\n")
	assert.Equal(t, []string{
		"POSTGRES_URL: is required",
		"MAX_CONCURRENT_WEBHOOKS: must be between 1 and 1000, got 0",
		`PORT: must be an integer, got "eighty"`,
		`TIMEOUT: must be a duration like 500ms or 30s, got "soon"`,
		"NEG: must not be negative, got -1s",
		`FLAG: must be true or false, got "maybe"`,
		"SHORT: must be at least 32 bytes",
	}, lines)
}

func TestLoaderTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert := filepath.Join(dir, "cert.pem")
	key := filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(cert, []byte("x"), 0o600))
	require.NoError(t, os.WriteFile(key, []byte("x"), 0o600))
	missing := filepath.Join(dir, "nope.pem")

	tests := []struct {
		name    string
		env     map[string]string
		want    config.TLSFiles
		wantErr []string
	}{
		{name: "plaintext", env: map[string]string{}},
		{
			name: "tls",
			env:  map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key},
			want: config.TLSFiles{CertFile: cert, KeyFile: key},
		},
		{
			name: "mtls",
			env:  map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "TLS_CA_FILE": cert},
			want: config.TLSFiles{CertFile: cert, KeyFile: key, CAFile: cert},
		},
		{
			name:    "cert without key",
			env:     map[string]string{"TLS_CERT_FILE": cert},
			want:    config.TLSFiles{CertFile: cert},
			wantErr: []string{"TLS_KEY_FILE: is required when TLS_CERT_FILE is set"},
		},
		{
			name:    "key without cert",
			env:     map[string]string{"TLS_KEY_FILE": key},
			want:    config.TLSFiles{KeyFile: key},
			wantErr: []string{"TLS_CERT_FILE: is required when TLS_KEY_FILE is set"},
		},
		{
			name:    "missing files",
			env:     map[string]string{"TLS_CERT_FILE": missing, "TLS_KEY_FILE": key, "TLS_CA_FILE": missing},
			want:    config.TLSFiles{CertFile: missing, KeyFile: key, CAFile: missing},
			wantErr: []string{"TLS_CERT_FILE: cannot read", "TLS_CA_FILE: cannot read"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := config.New(env(tt.env))
			got := l.TLS()
			assert.Equal(t, tt.want, got)
			if len(tt.wantErr) == 0 {
				require.NoError(t, l.Err())
				return
			}
			require.Error(t, l.Err())
			for _, w := range tt.wantErr {
				assert.Contains(t, l.Err().Error(), w)
			}
		})
	}
}

func TestFillZeroFillsOnlyMissingValues(t *testing.T) {
	t.Parallel()
	type inner struct{ URL string }
	type cfg struct {
		Addr    string
		Workers int
		Wait    time.Duration
		Off     bool
		List    []string
		Vendor  inner
		private int
	}
	defaults := cfg{Addr: ":9101", Workers: 8, Wait: time.Second, Off: true, List: []string{"a"}, Vendor: inner{URL: "https://x"}, private: 3}
	c := cfg{Addr: ":1", Workers: -1}
	config.FillZero(&c, defaults)
	want := cfg{Addr: ":1", Workers: 8, Wait: time.Second, Vendor: inner{URL: "https://x"}}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("FillZero = %+v, want %+v", c, want)
	}
	set := cfg{Addr: ":2", Workers: 2, Wait: time.Minute, Vendor: inner{URL: "https://y"}}
	got := set
	config.FillZero(&got, defaults)
	if !reflect.DeepEqual(got, set) {
		t.Fatalf("FillZero changed set fields: %+v", got)
	}
}
