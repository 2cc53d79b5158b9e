package clinkmobile_test

import (
	"fmt"
	"go/importer"
	"go/token"
	"go/types"
	"strings"
	"sync"
	"testing"
)

// TestGobindTypes applies gobind's type rules (golang.org/x/mobile/cmd/
// gobind, "Type restrictions") to every exported name of the package, so
// that gomobile bind binds all of them rather than skipping some with a
// comment in the generated code. This machine has neither the Android
// NDK nor Xcode for gomobile bind; gobind itself, run on this package,
// generated Java and Objective-C for every name (docs/sdk.md, "Mobile").
//
// The rules: signed integers, floats, bool, string and []byte; this
// package's structs by pointer and its interfaces; functions and methods
// whose parameters and results are of those types, with no result, one,
// or two of which the second is error; struct fields and interface
// methods that follow the same rules. No exported variables (no package
// state), no types of other packages.
func TestGobindTypes(t *testing.T) {
	const path = "github.com/clinkme/clinkd/client/clinkmobile"
	c := checkGobind(t, path)
	if c.names < 10 {
		t.Errorf("only %d exported names checked: the package did not load as expected", c.names)
	}
	for _, p := range c.problems {
		t.Error(p)
	}
	t.Logf("%d exported names of %s follow gobind's rules", c.names, path)
}

// TestGobindRulesBite: the check finds what gobind skips in package
// client, whose API is not made for it (gobind skipped 5 functions and 64
// methods of it, and 126 fields, when this test was written): an app
// binding it directly would need a wrapper of its own, which is what
// clinkmobile is.
func TestGobindRulesBite(t *testing.T) {
	c := checkGobind(t, "github.com/clinkme/clinkd/client")
	if len(c.problems) < 50 {
		t.Errorf("the check finds %d problems in package client; gobind skips far more: the check is too lax", len(c.problems))
	}
	t.Logf("package client: %d of its exported names break gobind's rules somewhere", len(c.problems))
}

// sourceImporter type-checks packages from source, once each for the
// tests of this file (clinkmobile loads client, which the other test
// checks).
var sourceImporter = sync.OnceValue(func() types.Importer {
	return importer.ForCompiler(token.NewFileSet(), "source", nil)
})

// checkGobind loads the package at path from source and checks its
// exported API.
func checkGobind(t *testing.T, path string) *gobindCheck {
	t.Helper()
	pkg, err := sourceImporter().Import(path)
	if err != nil {
		t.Fatal(err)
	}
	c := &gobindCheck{pkg: pkg}
	for _, name := range pkg.Scope().Names() {
		obj := pkg.Scope().Lookup(name)
		if !obj.Exported() {
			continue
		}
		c.names++
		switch o := obj.(type) {
		case *types.Func:
			c.signature(name, o.Type().(*types.Signature))
		case *types.Const:
			if b, ok := o.Type().Underlying().(*types.Basic); !ok || !basicOK(b) {
				c.fail(name, "constant of type %s", o.Type())
			}
		case *types.Var:
			c.fail(name, "an exported variable (gobind binds it, but it is package state)")
		case *types.TypeName:
			named, ok := o.Type().(*types.Named)
			if !ok {
				c.fail(name, "an alias")
				continue
			}
			switch u := named.Underlying().(type) {
			case *types.Struct:
				for i := range u.NumFields() {
					if f := u.Field(i); f.Exported() && !c.value(f.Type()) {
						c.fail(name+"."+f.Name(), "field of type %s", f.Type())
					}
				}
				ms := types.NewMethodSet(types.NewPointer(named))
				for i := range ms.Len() {
					if m := ms.At(i).Obj(); m.Exported() {
						c.signature(name+"."+m.Name(), m.Type().(*types.Signature))
					}
				}
			case *types.Interface:
				for i := range u.NumMethods() {
					if m := u.Method(i); m.Exported() {
						c.signature(name+"."+m.Name(), m.Type().(*types.Signature))
					}
				}
			default:
				c.fail(name, "a type whose underlying type is %s: only structs and interfaces bind", u)
			}
		}
	}
	return c
}

type gobindCheck struct {
	pkg      *types.Package
	names    int
	problems []string
}

func (c *gobindCheck) fail(name, format string, args ...any) {
	c.problems = append(c.problems, name+": "+strings.TrimSpace(fmtSprintf(format, args...))+", which gobind skips")
}

// signature checks a function or method type.
func (c *gobindCheck) signature(name string, s *types.Signature) {
	if s.Variadic() {
		c.fail(name, "variadic")
	}
	for i := range s.Params().Len() {
		if p := s.Params().At(i); !c.value(p.Type()) {
			c.fail(name, "parameter %s of type %s", p.Name(), p.Type())
		}
	}
	res := s.Results()
	switch res.Len() {
	case 0:
	case 1:
		if t := res.At(0).Type(); !isError(t) && !c.value(t) {
			c.fail(name, "result of type %s", t)
		}
	case 2:
		if !c.value(res.At(0).Type()) || !isError(res.At(1).Type()) {
			c.fail(name, "results (%s, %s): the second of two must be error", res.At(0).Type(), res.At(1).Type())
		}
	default:
		c.fail(name, "%d results", res.Len())
	}
}

// value reports whether gobind passes a parameter, result or field of
// type t.
func (c *gobindCheck) value(t types.Type) bool {
	switch t := t.(type) {
	case *types.Basic:
		return basicOK(t)
	case *types.Slice:
		b, ok := t.Elem().(*types.Basic)
		return ok && b.Kind() == types.Byte
	case *types.Pointer:
		n, ok := t.Elem().(*types.Named)
		if !ok || n.Obj().Pkg() != c.pkg {
			return false
		}
		_, isStruct := n.Underlying().(*types.Struct)
		return isStruct
	case *types.Named:
		if n := t.Obj(); n.Pkg() != c.pkg {
			return false
		}
		_, isInterface := t.Underlying().(*types.Interface)
		return isInterface
	}
	return false
}

func isError(t types.Type) bool { return types.Identical(t, types.Universe.Lookup("error").Type()) }

// basicOK: signed integers, floats, bool and string (untyped constants
// of those kinds too).
func basicOK(b *types.Basic) bool {
	switch b.Kind() {
	case types.Bool, types.String, types.Int, types.Int8, types.Int16, types.Int32, types.Int64,
		types.Float32, types.Float64, types.UntypedBool, types.UntypedString, types.UntypedInt,
		types.UntypedRune, types.UntypedFloat:
		return true
	}
	return false
}

func fmtSprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }
