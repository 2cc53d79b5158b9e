// Package httpjson writes clinkd's HTTP answers: JSON bodies, and errors as
// a status plus {"error":{"code":"...","message":"..."}}, where code is a
// stable machine-readable string and message is for people.
package httpjson

import (
	"encoding/json"
	"net/http"
)

// Write sends v as JSON with the status.
func Write(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// ErrorBody is the JSON shape of every error answer.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error sends an error answer. message goes to the client: never put a
// secret or an internal detail in it.
func Error(w http.ResponseWriter, status int, code, message string) {
	Write(w, status, ErrorBody{ErrorDetail{Code: code, Message: message}})
}
