package admin

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator/internal/store"
)

// fakeAPI implements the calls these tests make; any other call panics
// through the nil embedded interface.
type fakeAPI struct {
	API
	deleted []string
}

func (f *fakeAPI) DeleteRecord(_ context.Context, v store.Vendor, typ, id string) error {
	if id == "missing" {
		return fmt.Errorf("%w: no %s %s", store.ErrNotFound, typ, id)
	}
	f.deleted = append(f.deleted, string(v)+"/"+typ+"/"+id)
	return nil
}

func (f *fakeAPI) AddUser(store.UserSpec) (store.User, error) {
	return store.User{}, store.ErrClosed
}

func serve(t *testing.T, api API, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	mux := http.NewServeMux()
	Routes(mux, api)
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest(method, path, strings.NewReader(body)))
	return w
}

func TestAdminMapsErrorsToStatuses(t *testing.T) {
	t.Parallel()
	api := &fakeAPI{}
	require.Equal(t, http.StatusNoContent, serve(t, api, http.MethodDelete, "/_admin/records/oura/sleep/x1", "").Code)
	require.Equal(t, []string{"oura/sleep/x1"}, api.deleted)
	require.Equal(t, http.StatusNotFound, serve(t, api, http.MethodDelete, "/_admin/records/whoop/sleep/missing", "").Code)
	w := serve(t, api, http.MethodDelete, "/_admin/records/fitbit/sleep/x1", "")
	require.Equal(t, http.StatusBadRequest, w.Code)
	require.Contains(t, w.Body.String(), "unknown vendor")
	require.Equal(t, http.StatusServiceUnavailable, serve(t, api, http.MethodPost, "/_admin/users", `{"name":"a"}`).Code)
	w = serve(t, api, http.MethodPost, "/_admin/users", `{"username":"a"}`)
	require.Equal(t, http.StatusBadRequest, w.Code, "unknown fields are typos worth reporting")
	require.Equal(t, http.StatusNotFound, serve(t, api, http.MethodGet, "/_admin/nothing", "").Code)
}
