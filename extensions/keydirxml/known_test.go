package keydirxml_test

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"os"
	"testing"

	"github.com/clinkme/clinkd/extensions/keydirxml"
)

// TestConditionalLookupVectors reads testdata/lookup_known_vectors.json
// (docs/protocol.md, "Conditional lookups"): every request and result
// decodes, or not, and validates, or not, as its outcome says. An
// unknown role or outcome fails the test.
func TestConditionalLookupVectors(t *testing.T) {
	b, err := os.ReadFile("testdata/lookup_known_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Vectors []struct {
			Name, Role, XML, Outcome string
			Known, Unchanged         int64
		}
	}
	if err := json.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range file.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			var l keydirxml.Lookup1
			decodeErr := xml.Unmarshal([]byte(v.XML), &l)
			var err error
			switch v.Role {
			case "request":
				err = decodeErr
				if err == nil {
					err = l.Validate(20)
				}
			case "result":
				err = decodeErr
				if err == nil {
					err = l.ValidateResult()
				}
			default:
				t.Fatalf("unknown role %q", v.Role)
			}
			switch v.Outcome {
			case "ok":
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if l.Known != v.Known || l.Unchanged != v.Unchanged {
					t.Errorf("known %d, unchanged %d; want %d, %d", l.Known, l.Unchanged, v.Known, v.Unchanged)
				}
			case "invalid":
				if decodeErr != nil || !errors.Is(err, keydirxml.ErrInvalid) {
					t.Fatalf("decode error %v, validation %v; want it to decode and be invalid", decodeErr, err)
				}
			case "malformed":
				if decodeErr == nil {
					t.Fatalf("decoded (%+v); want a decoding error", l)
				}
			default:
				t.Fatalf("unknown outcome %q", v.Outcome)
			}
		})
	}
}
