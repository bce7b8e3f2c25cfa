package service

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/biobridge/bridge/pkg/buildinfo"
	"github.com/biobridge/bridge/pkg/config"
)

type cfg struct {
	Limit int
	Common
}

func load(getenv func(string) string) (cfg, error) {
	l := config.New(getenv)
	c := cfg{Limit: l.Int("MAX_CONCURRENT_WEBHOOKS", 50, 1, 1000)}
	c.Common = LoadCommon(l)
	return c, l.Err()
}

func TestMainReportsEveryInvalidVariableAtOnce(t *testing.T) {
	t.Parallel()
	env := map[string]string{"MAX_CONCURRENT_WEBHOOKS": "0", "LOG_FORMAT": "xml"}
	ran := false
	err := Main(context.Background(), []string{"svc"}, func(k string) string { return env[k] }, &bytes.Buffer{}, Spec[cfg]{
		Name: "svc", Load: load,
		Run: func(context.Context, cfg, *slog.Logger) error { ran = true; return nil },
	})
	if err == nil || ran {
		t.Fatalf("Main ran with a bad configuration (err=%v)", err)
	}
	for _, name := range []string{"MAX_CONCURRENT_WEBHOOKS", "LOG_FORMAT", "LOG_PSEUDONYM_KEY"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s:\n%v", name, err)
		}
	}
}

func TestMainRunsWithValidConfiguration(t *testing.T) {
	t.Parallel()
	env := map[string]string{"LOG_PSEUDONYM_KEY": "0123456789abcdef"}
	var got cfg
	err := Main(context.Background(), []string{"svc"}, func(k string) string { return env[k] }, &bytes.Buffer{}, Spec[cfg]{
		Name: "svc", Load: load,
		Run: func(_ context.Context, c cfg, _ *slog.Logger) error { got = c; return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Limit != 50 {
		t.Fatalf("default not applied: %+v", got)
	}
}

func TestMainVersionNeedsNoConfiguration(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := Main(context.Background(), []string{"svc", "version"}, func(string) string { return "" }, &out, Spec[cfg]{
		Name: "svc", Load: load,
		Run: func(context.Context, cfg, *slog.Logger) error { t.Error("version started the service"); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "svc " + buildinfo.Version() + "\n"; out.String() != want {
		t.Fatalf("version printed %q, want %q", out.String(), want)
	}
}
