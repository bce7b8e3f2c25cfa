package ingesttest

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/services/ingest/server"
)

// TestServiceACL checks over gRPC that with SERVICE_ACL set a valid service
// token reaches only the methods listed for its caller.
func TestServiceACL(t *testing.T) {
	t.Parallel()
	const monitorToken = "monitor-token"
	e := newEnv(t, options{ingest: func(c *server.Config) {
		c.ServiceTokens = "ops:" + opsToken + ",monitor:" + monitorToken
		c.ServiceACL = "ops=/biobridge.ingest.v1.IngestService/*;monitor=" + ingestv1.IngestService_GetBackfillProgress_FullMethodName
	}})

	_, err := e.ingestRPC.ListJobs(svc(opsToken), &ingestv1.ListJobsRequest{})
	require.NoError(t, err)
	_, err = e.ingestRPC.GetBackfillProgress(svc(monitorToken), &ingestv1.GetBackfillProgressRequest{UserId: "user-1"})
	require.NoError(t, err)

	for name, call := range map[string]func() error{
		"ListJobs": func() error {
			_, err := e.ingestRPC.ListJobs(svc(monitorToken), &ingestv1.ListJobsRequest{})
			return err
		},
		"RetryJobs": func() error {
			_, err := e.ingestRPC.RetryJobs(svc(monitorToken), &ingestv1.RetryJobsRequest{})
			return err
		},
		"IngestEvents": func() error {
			_, err := e.ingestRPC.IngestEvents(svc(monitorToken), &ingestv1.IngestEventsRequest{})
			return err
		},
	} {
		st := status.Convert(call())
		require.Equal(t, codes.PermissionDenied, st.Code(), name)
		require.Contains(t, st.Message(), "/"+name, name)
		require.NotContains(t, st.Message(), monitorToken, name)
	}
}
