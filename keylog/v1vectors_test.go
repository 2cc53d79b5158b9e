package keylog_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/keylog/ecvrf"
)

// V1Vectors is keylog/testdata/v1_vectors.json, written by keydir_v1.py
// (Python, from the RFCs and docs/protocol.md, not from this code).
type V1Vectors struct {
	Comment []string `json:"comment"`
	VRFKey  string   `json:"vrf_key"`
	VRF     []struct {
		Name, PK, Alpha, Pi, Expect, Beta, Index, JID string
	} `json:"vrf"`
	MapSteps []struct {
		Op, Index, Value, Root string
	} `json:"map_steps"`
	MapRoot   string `json:"map_root"`
	MapProofs []struct {
		Name, Index, Value, Proof, Expect string
	} `json:"map_proofs"`
	Records []struct {
		Record, Expect string
		LeafHash       string `json:"leaf_hash"`
	} `json:"records"`
}

func loadV1Vectors(t *testing.T) V1Vectors {
	t.Helper()
	b, err := os.ReadFile("testdata/v1_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v V1Vectors
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestV1Vectors: the VRF, the map (roots after each step, proofs and
// their tampered forms) and the v1 records of docs/protocol.md, as an
// independent Python implementation computed them.
func TestV1Vectors(t *testing.T) {
	t.Parallel()
	v := loadV1Vectors(t)
	key, err := keylog.ParseVRFKey(v.VRFKey)
	if err != nil {
		t.Fatalf("ParseVRFKey(vector) = %v", err)
	}
	for _, c := range v.VRF {
		beta, err := ecvrf.Verify(unhex(t, c.PK), unhex(t, c.Alpha), unhex(t, c.Pi))
		switch c.Expect {
		case "valid":
			if err != nil || hex.EncodeToString(beta) != c.Beta {
				t.Errorf("VRF %s: Verify = %x, %v; want %s", c.Name, beta, err, c.Beta)
			}
			if c.JID != "" {
				if !bytes.Equal(key.Public[:], unhex(t, c.PK)) {
					t.Fatalf("vrf_key is not the key of %s", c.Name)
				}
				x, err := key.Index(c.JID, unhex(t, c.Pi))
				if err != nil || hex.EncodeToString(x[:]) != c.Index {
					t.Errorf("VRF %s: Index = %x, %v; want %s", c.Name, x, err, c.Index)
				}
			}
		case "invalid":
			if err == nil {
				t.Errorf("VRF %s: Verify = nil error, want invalid", c.Name)
			}
		default:
			t.Fatalf("VRF %s: unknown expect %q", c.Name, c.Expect)
		}
	}
	m := new(keylog.Map)
	for i, s := range v.MapSteps {
		if s.Op != "set" {
			t.Fatalf("unknown map op %q", s.Op)
		}
		val, err := keylog.ParseMapValue(unhex(t, s.Value))
		if err != nil {
			t.Fatal(err)
		}
		m.Set([32]byte(unhex(t, s.Index)), val)
		if r := m.Root(); hex.EncodeToString(r[:]) != s.Root {
			t.Fatalf("map step %d: root %x, want %s", i, r, s.Root)
		}
	}
	root := [32]byte(unhex(t, v.MapRoot))
	for _, c := range v.MapProofs {
		x := [32]byte(unhex(t, c.Index))
		var val *keylog.MapValue
		if c.Value != "" {
			mv, err := keylog.ParseMapValue(unhex(t, c.Value))
			if err != nil {
				t.Fatal(err)
			}
			val = &mv
		}
		p, err := keylog.ParseMapProof(unhex(t, c.Proof))
		if err == nil {
			err = keylog.VerifyMap(root, x, val, p)
		}
		switch c.Expect {
		case "valid":
			if err != nil {
				t.Errorf("map proof %s: %v, want valid", c.Name, err)
			}
			if got := m.Prove(x).Marshal(); hex.EncodeToString(got) != c.Proof {
				t.Errorf("map proof %s: Prove = %x, want %s", c.Name, got, c.Proof)
			}
		case "not current":
			if !errors.Is(err, keylog.ErrMapRoot) {
				t.Errorf("map proof %s: %v, want ErrMapRoot", c.Name, err)
			}
		case "bad absence":
			if err == nil {
				t.Errorf("map proof %s: nil error, want a refused absence", c.Name)
			}
		case "malformed":
			if !errors.Is(err, keylog.ErrBadMapProof) {
				t.Errorf("map proof %s: %v, want ErrBadMapProof", c.Name, err)
			}
		default:
			t.Fatalf("map proof %s: unknown expect %q", c.Name, c.Expect)
		}
	}
	for _, c := range v.Records {
		r, err := keylog.ParseRecordV1([]byte(c.Record))
		switch {
		case c.Expect == "ok":
			if err != nil || string(r.Marshal()) != c.Record {
				t.Errorf("ParseRecordV1(%q) = %v", c.Record, err)
			}
			if h := tlog.RecordHash([]byte(c.Record)); hex.EncodeToString(h[:]) != c.LeafHash {
				t.Errorf("leaf hash of %q = %x, want %s", c.Record, h, c.LeafHash)
			}
		case c.Expect == "unsupported version":
			if !errors.Is(err, keylog.ErrUnsupportedVersion) {
				t.Errorf("ParseRecordV1(%q) = %v, want ErrUnsupportedVersion", c.Record, err)
			}
		case strings.HasPrefix(c.Expect, "malformed"):
			if !errors.Is(err, keylog.ErrBadRecord) || errors.Is(err, keylog.ErrUnsupportedVersion) {
				t.Errorf("ParseRecordV1(%q) = %v, want malformed (%s)", c.Record, err, c.Expect)
			}
		default:
			t.Fatalf("record %q: unknown expect %q", c.Record, c.Expect)
		}
	}
}
