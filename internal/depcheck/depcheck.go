// Package depcheck holds a package to the imports its design allows, for
// tests. A boundary written only in a package comment erodes one
// convenient import at a time; a test that lists what the package links
// fails on the first one.
package depcheck

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// Only fails t unless every package that pkg links (go list -deps, test
// files excluded) is pkg itself, part of the standard library, one of
// allowed, or linked by one of allowed. pkg and allowed are import paths.
func Only(t testing.TB, pkg string, allowed ...string) {
	t.Helper()
	deps := list(t, pkg)
	ok := list(t, allowed...)
	for _, d := range deps {
		if d != pkg && !slices.Contains(ok, d) {
			t.Errorf("%s links %s, which is neither the standard library nor one of %s", pkg, d, strings.Join(allowed, ", "))
		}
	}
}

// list returns the non-standard packages that pkgs link, pkgs included.
func list(t testing.TB, pkgs ...string) []string {
	t.Helper()
	// go test puts its own GOROOT/bin first in PATH, so this is the go
	// command running the test.
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("depcheck: %v", err)
	}
	args := append([]string{"list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}"}, pkgs...)
	out, err := exec.Command(goCmd, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("depcheck: go %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return strings.Fields(string(out))
}
