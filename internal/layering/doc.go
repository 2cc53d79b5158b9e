// Package layering holds the test that keeps the module's import graph as
// docs/DEVELOPING.md draws it: every package sits on its folder's layer,
// imports only downward, feature packages never import one another, the
// device SDK and clinkctl link nothing of the server, and the production
// clinkd links nothing of the lab. It has no code; `go test ./...` runs the
// check.
package layering
