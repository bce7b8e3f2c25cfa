// Package jsonhttp writes the JSON answers every part of the emulator
// sends (vendor APIs, OAuth and the admin API) the same way.
package jsonhttp

import (
	"encoding/json"
	"net/http"
)

// Write writes v as JSON with status and a trailing newline; if v cannot be
// encoded it answers 500.
func Write(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"encode response"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
