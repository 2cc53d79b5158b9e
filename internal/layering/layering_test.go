package layering_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/clinkme/clinkd"

// layer is a floor of the house, lowest first. A package may import
// packages of a lower floor, and of its own floor only where allowed below.
type layer int

const (
	ground   layer = iota // payload types, formats, helpers, the lab harness: nothing of ours above
	routing               // the link and the envelope router
	feature               // one folder per capability; never imports another feature
	assembly              // the daemon, which wires the features
	device                // the device SDK and its CLI: ground only, nothing of the server
	tools                 // test harnesses, the lab deployment, the doctor, benchmarks
	mains                 // thin mains
)

var layerNames = [...]string{"ground", "routing", "feature", "assembly", "device", "tools", "mains"}

func (l layer) String() string { return layerNames[l] }

// folders maps each folder (a module-relative directory; a folder's
// sub-folders inherit its layer unless listed themselves) to its layer.
// docs/DEVELOPING.md's layout table is the same map in prose.
var folders = map[string]layer{
	"address":    ground,
	"extensions": ground,
	"internal":   ground,
	"keylog":     ground,
	"lab":        ground,
	"component":  routing,
	"keydir":     feature,
	"expiry":     feature,
	"receipts":   feature,
	"clinkid":    feature,
	"turncred":   feature,
	"daemon":     assembly,
	"client":     device,
	"clinkdtest": tools,
	"devicetest": tools,
	"abuse":      tools,
	"labdeploy":  tools,
	"doctor":     tools,
	"bench":      tools,
	"cmd":        mains,

	// Sub-folders on another floor than their folder's.
}

type pkg struct {
	ImportPath string
	Dir        string
	Standard   bool
	Imports    []string
	Deps       []string
}

// list runs go list over the workspace (go.work: the server's module,
// the SDK's, and the wire formats').
func list(t *testing.T, patterns ...string) []pkg {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := append([]string{"list", "-json=ImportPath,Dir,Standard,Imports,Deps"}, patterns...)
	out, err := exec.Command(goBin, args...).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func rel(importPath string) string {
	return strings.TrimPrefix(strings.TrimPrefix(importPath, module), "/")
}

// folderOf returns the most specific folder of the table that holds the
// package, and whether there is one.
func folderOf(relPath string) (string, bool) {
	for p := relPath; p != "." && p != ""; p = filepath.Dir(p) {
		if _, ok := folders[p]; ok {
			return p, true
		}
	}
	return "", false
}

// capability is a package's top-level folder: feature packages may import
// packages of their own capability (keydir/logdb from keydir), never of
// another.
func capability(relPath string) string {
	top, _, _ := strings.Cut(relPath, "/")
	return top
}

func TestLayers(t *testing.T) {
	for _, p := range list(t, module+"/...") {
		from := rel(p.ImportPath)
		folder, ok := folderOf(from)
		if !ok {
			t.Errorf("%s is in no folder of the layer table: add it here and to docs/DEVELOPING.md", from)
			continue
		}
		fromLayer := folders[folder]
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			to := rel(imp)
			toFolder, ok := folderOf(to)
			if !ok {
				continue // reported for that package itself
			}
			toLayer := folders[toFolder]
			switch {
			case capability(from) == capability(to):
				// Within one capability's folder.
			case toLayer == device && fromLayer >= tools:
				// Tools act as devices (the doctor, test harnesses).
			case toFolder == "lab" && fromLayer < tools:
				t.Errorf("%s (%v) imports the lab harness %s: only tools, mains and tests start servers", from, fromLayer, to)
			case fromLayer == device && toLayer != ground:
				t.Errorf("%s (device) imports %s (%v): the device SDK links nothing of the server", from, to, toLayer)
			case toLayer == device:
				t.Errorf("%s (%v) imports %s (device): the server never links the SDK", from, fromLayer, to)
			case fromLayer == ground && toLayer == ground:
				// Helpers and payload types may build on one another.
			case toLayer >= fromLayer:
				t.Errorf("%s (%v) imports %s (%v): imports go to a lower floor only", from, fromLayer, to, toLayer)
			}
			if fromLayer == feature && toLayer == feature && capability(from) != capability(to) {
				t.Errorf("feature %s imports feature %s: features never import each other (daemon wires them)", from, to)
			}
		}
	}
}

// boundaries hold a package to what it may link beside the standard
// library: the packages listed and what they link. A boundary written only
// in a package comment erodes one convenient import at a time.
var boundaries = map[string][]string{
	// keylog is the ground the server and every verifier share: it links
	// nothing of the server (no store, no component, no metrics).
	"keylog": {"golang.org/x/mod/sumdb/tlog", "golang.org/x/mod/sumdb/note", "mellium.im/xmpp/jid", module + "/extensions/keydirxml",
		module + "/keylog/ecvrf"},
	// The VRF is group arithmetic on filippo.io/edwards25519 and nothing
	// else: keylog, the device and the auditor share it.
	"keylog/ecvrf": {"filippo.io/edwards25519"},
	// An audit verifies the server, so it runs none of the server's code:
	// of this module, keylog and what keylog links.
	"keydir/audit": {module + "/keylog", "golang.org/x/mod/sumdb/tlog", "golang.org/x/mod/sumdb/note"},
}

func TestBoundaries(t *testing.T) {
	for pkgPath, allowed := range boundaries {
		ok := map[string]bool{}
		for _, p := range list(t, append([]string{"-deps=true"}, allowed...)...) {
			ok[p.ImportPath] = true
		}
		for _, p := range list(t, "-deps=true", module+"/"+pkgPath) {
			if p.Standard || p.ImportPath == module+"/"+pkgPath || ok[p.ImportPath] {
				continue
			}
			t.Errorf("%s links %s, which is neither the standard library nor one of %s", pkgPath, p.ImportPath, strings.Join(allowed, ", "))
		}
	}
}

// TestDeps checks what the shipped binaries link.
func TestDeps(t *testing.T) {
	forbidden := map[string][]string{
		// clinkctl is a device: nothing of the server.
		"client/cmd/clinkctl": {module + "/daemon", module + "/component", module + "/keydir", module + "/clinkid", module + "/expiry",
			module + "/receipts", module + "/turncred", module + "/lab", module + "/labdeploy",
			"github.com/jackc/pgx", "github.com/prometheus/", "go.yaml.in/yaml"},
		// The production clinkd starts no lab process.
		"cmd/clinkd": {module + "/lab", module + "/labdeploy", module + "/clinkdtest"},
	}
	for _, p := range list(t, "-deps=false", module+"/cmd/...", module+"/client/cmd/...") {
		bad, ok := forbidden[rel(p.ImportPath)]
		if !ok {
			continue
		}
		for _, d := range p.Deps {
			for _, b := range bad {
				if d == b || strings.HasPrefix(d, strings.TrimSuffix(b, "/")+"/") {
					t.Errorf("%s links %s", rel(p.ImportPath), d)
				}
			}
		}
	}
}

// TestLayoutDocumented checks that docs/DEVELOPING.md's layout table names
// every package's folder, so the map a newcomer reads is the whole house.
func TestLayoutDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "DEVELOPING.md"))
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	sc := bufio.NewScanner(bytes.NewReader(doc))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "| `") {
			rows = append(rows, sc.Text())
		}
	}
	for _, p := range list(t, module+"/...") {
		r := rel(p.ImportPath)
		if !slices.ContainsFunc(rows, func(row string) bool { return strings.Contains(row, "`"+r+"/`") }) {
			t.Errorf("docs/DEVELOPING.md's layout table has no row naming `%s/`", r)
		}
	}
}

// sdkModules are the modules an app that uses the SDK links: the SDK's,
// and the wire formats it shares with the server. None of them is the
// server's module.
var sdkModules = []string{"client", "extensions", "address", "keylog"}

// TestSDKModule: the SDK is a module of its own (client/go.mod) that
// requires nothing of the server's module, so an app's go.mod and go.sum
// name none of the server's dependencies: built alone, outside the
// workspace, it links no pgx, Prometheus, YAML or server package, and its
// go.sum has none of them.
func TestSDKModule(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	forbidden := []string{"github.com/jackc/", "github.com/prometheus/", "go.yaml.in/yaml", "gopkg.in/yaml"}
	for _, m := range sdkModules {
		dir := filepath.Join("..", "..", m)
		cmd := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}", "./...")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOWORK=off")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps in %s (GOWORK=off): %v\n%s", m, err, out)
		}
		n := 0
		for _, dep := range strings.Fields(string(out)) {
			n++
			for _, f := range forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("module %s links %s", m, dep)
				}
			}
			if strings.HasPrefix(dep, module+"/") && !slices.ContainsFunc(sdkModules, func(s string) bool { return strings.HasPrefix(dep, module+"/"+s+"/") || dep == module+"/"+s }) {
				t.Errorf("module %s links %s, a package of the server's module", m, dep)
			}
		}
		if n < 10 {
			t.Errorf("go list -deps in %s listed %d packages: it did not run as expected", m, n)
		}
		cmd = exec.Command(goBin, "mod", "edit", "-json")
		cmd.Dir = dir
		out, err = cmd.Output()
		if err != nil {
			t.Fatalf("go mod edit -json in %s: %v", m, err)
		}
		var gm struct {
			Module  struct{ Path string }
			Require []struct{ Path string }
		}
		if err := json.Unmarshal(out, &gm); err != nil {
			t.Fatal(err)
		}
		if gm.Module.Path != module+"/"+m {
			t.Errorf("%s/go.mod is module %s, want %s/%s", m, gm.Module.Path, module, m)
		}
		for _, r := range gm.Require {
			if r.Path == module {
				t.Errorf("%s/go.mod requires the server's module", m)
			}
		}
		sum, err := os.ReadFile(filepath.Join(dir, "go.sum"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range forbidden[:2] {
			if strings.Contains(string(sum), f) {
				t.Errorf("%s/go.sum names %s", m, f)
			}
		}
	}
}

// TestTestCommand: README's test command is the one .ci/run runs.
func TestTestCommand(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	ci, err := os.ReadFile(filepath.Join("..", "..", ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), "then runs the test\ncommand:\n\n    ")
	if !ok {
		t.Fatal("README.md does not say \"then runs the test command:\" before an indented command")
	}
	readmeCmd, _, _ := strings.Cut(after, "\n")
	var ciCmd string
	for _, line := range strings.Split(string(ci), "\n") {
		if strings.HasPrefix(line, "go test ") {
			ciCmd = line
		}
	}
	if readmeCmd != ciCmd || ciCmd == "" {
		t.Errorf("README's test command is %q, .ci/run runs %q", readmeCmd, ciCmd)
	}
}
