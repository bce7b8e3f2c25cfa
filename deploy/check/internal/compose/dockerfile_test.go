package compose

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestIgnored(t *testing.T) {
	t.Parallel()
	ignore := []byte("# comment\n.git\n**/testdata\ndeploy/compose\nservices/*/tmp\n!services/keep/tmp\n")
	tests := []struct {
		path, want string
	}{
		{"go.work", ""},
		{".git", ".git"},
		{"pkg/catalog/testdata", "**/testdata"},
		{"testdata", "**/testdata"},
		{"deploy/compose/compose.yaml", "deploy/compose"},
		{"deploy/check/go.mod", ""},
		{"services/ingest/tmp/x", "services/*/tmp"},
		{"services/keep/tmp", ""},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, ignored(ignore, tt.path), tt.path)
	}
}

func TestParseDockerfileJoinsContinuations(t *testing.T) {
	t.Parallel()
	ins := parseDockerfile([]byte("# c\nFROM a AS b\nRUN x \\\n    y\n\nHEALTHCHECK --interval=1s \\\n  CMD [\"/s\", \"healthcheck\"]\n"))
	require.Len(t, ins, 3)
	require.Equal(t, "RUN", ins[1].Cmd)
	require.Equal(t, "x  y", ins[1].Args)
	require.Equal(t, 6, ins[2].Line)
	require.Contains(t, ins[2].Args, "healthcheck")
}
