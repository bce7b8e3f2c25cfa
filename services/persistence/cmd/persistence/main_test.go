package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/biobridge/bridge/pkg/service"
	"github.com/stretchr/testify/require"
)

func TestRunReportsEveryMissingVariable(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := service.Main(context.Background(), []string{"persistence"}, func(string) string { return "" }, &out, spec)
	require.Error(t, err)
	for _, v := range []string{"POSTGRES_URL", "REDIS_URL", "SERVICE_TOKENS", "LOG_PSEUDONYM_KEY"} {
		require.Contains(t, err.Error(), v)
	}
}
