package client

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// repoFile reads a file of the repository by its path from the
// repository's root: the specs in docs/ and the key log's vectors, which
// the SDK's tests check the code against. They are not part of the SDK's
// module, so where the module is not in the repository (a module cache,
// for an app's go test all) the test is skipped, naming what it needs;
// in the repository a missing file fails it.
func repoFile(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", filepath.FromSlash(rel)))
	if errors.Is(err, fs.ErrNotExist) && inModuleCache() {
		t.Skipf("%s is in the clinkd repository, not in the SDK module", rel)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// inModuleCache reports whether the test runs from a module cache (whose
// directories are read-only, under GOMODCACHE's pkg/mod).
func inModuleCache() bool {
	wd, err := os.Getwd()
	return err == nil && strings.Contains(filepath.ToSlash(wd), "/pkg/mod/")
}
