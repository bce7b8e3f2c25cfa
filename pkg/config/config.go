// Package config reads typed configuration from an injected getenv function
// and collects every problem it finds, so a service that starts with a bad
// environment reports all of its mistakes at once instead of one per restart.
//
// Every error message starts with the variable's name, for example
// "MAX_CONCURRENT_WEBHOOKS: must be between 1 and 1000, got 0". Values of
// variables are never echoed for the string-typed readers because they may be
// secrets.
package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Loader reads variables through getenv and accumulates validation errors.
// It is not safe for concurrent use; services build their config once at start.
type Loader struct {
	getenv func(string) string
	errs   []error
}

// New returns a Loader reading through getenv (os.Getenv in main, a map in tests).
func New(getenv func(string) string) *Loader {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	return &Loader{getenv: getenv}
}

func (l *Loader) lookup(name string) string {
	return strings.TrimSpace(l.getenv(name))
}

func (l *Loader) fail(name, format string, args ...any) {
	l.errs = append(l.errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
}

// String returns the variable's value, or def when it is unset or blank.
func (l *Loader) String(name, def string) string {
	if v := l.lookup(name); v != "" {
		return v
	}
	return def
}

// Required returns the variable's value and records an error when it is unset or blank.
func (l *Loader) Required(name string) string {
	v := l.lookup(name)
	if v == "" {
		l.fail(name, "is required")
	}
	return v
}

// Int parses an integer within [min, max]; def is used when the variable is
// unset. On error def is returned so callers can keep going and report later.
func (l *Loader) Int(name string, def, min, max int) int {
	raw := l.lookup(name)
	if raw == "" {
		return def
	}
	v, err := strconv.Atoi(raw)
	if err != nil {
		l.fail(name, "must be an integer, got %q", raw)
		return def
	}
	if v < min || v > max {
		l.fail(name, "must be between %d and %d, got %d", min, max, v)
		return def
	}
	return v
}

// Duration parses a Go duration such as "1500ms" or "30s". Negative values
// are rejected because no setting in this project means anything by them.
func (l *Loader) Duration(name string, def time.Duration) time.Duration {
	raw := l.lookup(name)
	if raw == "" {
		return def
	}
	v, err := time.ParseDuration(raw)
	if err != nil {
		l.fail(name, "must be a duration like 500ms or 30s, got %q", raw)
		return def
	}
	if v < 0 {
		l.fail(name, "must not be negative, got %s", v)
		return def
	}
	return v
}

// Bool parses true/false (and the other spellings strconv.ParseBool accepts).
func (l *Loader) Bool(name string, def bool) bool {
	raw := l.lookup(name)
	if raw == "" {
		return def
	}
	v, err := strconv.ParseBool(raw)
	if err != nil {
		l.fail(name, "must be true or false, got %q", raw)
		return def
	}
	return v
}

// List splits a comma-separated value, trimming spaces and dropping empty
// elements. def is returned when the variable is unset or contains no elements.
func (l *Loader) List(name string, def []string) []string {
	raw := l.lookup(name)
	if raw == "" {
		return def
	}
	var out []string
	for _, part := range strings.Split(raw, ",") {
		if p := strings.TrimSpace(part); p != "" {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return def
	}
	return out
}

// Bytes returns the raw bytes of the variable's value (no decoding), or nil
// when unset. Use it for secrets such as HMAC keys; Check can enforce a length.
func (l *Loader) Bytes(name string) []byte {
	v := l.lookup(name)
	if v == "" {
		return nil
	}
	return []byte(v)
}

// Check records msg as an error for name when ok is false. It lets callers
// add cross-field rules ("must be at least 32 bytes") to the same report.
func (l *Loader) Check(name string, ok bool, msg string) {
	if !ok {
		l.fail(name, "%s", msg)
	}
}

// Err returns every recorded problem joined with errors.Join, or nil.
func (l *Loader) Err() error {
	return errors.Join(l.errs...)
}

// TLSFiles names the PEM files for TLS between services. With only
// CertFile and KeyFile set, a server speaks TLS; with CAFile as well it
// also requires and verifies client certificates (mutual TLS). A client uses
// CAFile to verify the server and CertFile/KeyFile as its client certificate.
// All empty means plaintext, which is meant only for loopback: a gRPC
// server without TLS binds to loopback unless AllowPlaintext is set.
type TLSFiles struct {
	CertFile string
	KeyFile  string
	CAFile   string
	// AllowPlaintext is GRPC_ALLOW_PLAINTEXT (default false): serve gRPC
	// without TLS on every interface (behind a service mesh that encrypts,
	// or in a private development network). Servers log a warning.
	AllowPlaintext bool
}

// Enabled reports whether any TLS material is configured.
func (t TLSFiles) Enabled() bool {
	return t.CertFile != "" || t.KeyFile != "" || t.CAFile != ""
}

// TLS reads TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE and
// GRPC_ALLOW_PLAINTEXT, checking that the certificate and key come together
// and that every named file exists.
func (l *Loader) TLS() TLSFiles {
	t := TLSFiles{
		CertFile:       l.lookup("TLS_CERT_FILE"),
		KeyFile:        l.lookup("TLS_KEY_FILE"),
		CAFile:         l.lookup("TLS_CA_FILE"),
		AllowPlaintext: l.Bool("GRPC_ALLOW_PLAINTEXT", false),
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		if t.CertFile == "" {
			l.fail("TLS_CERT_FILE", "is required when TLS_KEY_FILE is set")
		} else {
			l.fail("TLS_KEY_FILE", "is required when TLS_CERT_FILE is set")
		}
	}
	for _, f := range []struct{ name, path string }{
		{"TLS_CERT_FILE", t.CertFile},
		{"TLS_KEY_FILE", t.KeyFile},
		{"TLS_CA_FILE", t.CAFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			l.fail(f.name, "cannot read %s: %v", f.path, errors.Unwrap(err))
		}
	}
	return t
}

// FillZero sets every zero field of *c to the same field of defaults, so a
// service's defaults live in one place (what its LoadConfig reads from an
// empty environment) and a Config built by hand gets the same ones. A
// string is zero when empty, an integer or duration when not positive;
// structs are filled field by field. Other kinds (booleans, slices,
// pointers, funcs, interfaces) are left as they are: their zero is a
// choice, not a missing value.
func FillZero[T any](c *T, defaults T) {
	fillZero(reflect.ValueOf(c).Elem(), reflect.ValueOf(defaults))
}

func fillZero(dst, def reflect.Value) {
	switch dst.Kind() {
	case reflect.String:
		if dst.String() == "" {
			dst.SetString(def.String())
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if dst.Int() <= 0 {
			dst.SetInt(def.Int())
		}
	case reflect.Struct:
		for i := range dst.NumField() {
			if dst.Type().Field(i).IsExported() {
				fillZero(dst.Field(i), def.Field(i))
			}
		}
	}
}
