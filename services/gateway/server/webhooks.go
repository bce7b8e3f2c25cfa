package server

import (
	"io"
	"log/slog"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
)

// webhooks passes vendor webhooks to ingest with the exact body bytes and
// the signature headers; ingest verifies and answers.
type webhooks struct {
	ingest  ingestv1.IngestServiceClient
	mux     *runtime.ServeMux
	maxBody int64
	logger  *slog.Logger
}

var webhookJSON = &runtime.JSONPb{MarshalOptions: protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}}

func (h *webhooks) read(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", "webhook body is too large")
		return nil, false
	}
	return body, true
}

func (h *webhooks) whoop(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	body, ok := h.read(w, r)
	if !ok {
		return
	}
	resp, err := h.ingest.HandleWhoopWebhook(outgoing(r), &ingestv1.HandleWhoopWebhookRequest{
		RawBody:            body,
		Signature:          r.Header.Get("X-WHOOP-Signature"),
		SignatureTimestamp: r.Header.Get("X-WHOOP-Signature-Timestamp"),
	})
	if err != nil {
		errorHandler(r.Context(), h.mux, webhookJSON, w, r, err)
		return
	}
	writeProto(w, resp)
}

func (h *webhooks) oura(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	body, ok := h.read(w, r)
	if !ok {
		return
	}
	resp, err := h.ingest.HandleOuraWebhook(outgoing(r), &ingestv1.HandleOuraWebhookRequest{
		RawBody:   body,
		Signature: r.Header.Get("x-oura-signature"),
		Timestamp: r.Header.Get("x-oura-timestamp"),
	})
	if err != nil {
		errorHandler(r.Context(), h.mux, webhookJSON, w, r, err)
		return
	}
	writeProto(w, resp)
}

func writeProto(w http.ResponseWriter, m proto.Message) {
	b, err := webhookJSON.Marshal(m)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", "internal error")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}
