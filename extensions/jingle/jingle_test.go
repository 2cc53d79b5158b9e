package jingle_test

import (
	"encoding/xml"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/extensions/jingle"
)

// vectors reads the example stanzas of docs/calls.md.
func vectors(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("testdata/*.xml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no vectors: %v", err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

func TestVectorsValid(t *testing.T) {
	t.Parallel()
	for name, b := range vectors(t) {
		var j jingle.Jingle
		if err := xml.Unmarshal(b, &j); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if err := j.Validate(); err != nil {
			t.Errorf("%s: Validate() = %v, want nil", name, err)
		}
	}
}

// TestValidateRefuses flips one thing at a time in the session-initiate
// vector; each must be refused with ErrInvalid.
func TestValidateRefuses(t *testing.T) {
	t.Parallel()
	base := string(vectors(t)["session-initiate.xml"])
	tests := []struct{ name, old, new string }{
		{"unknown action", "session-initiate", "session-steal"},
		{"empty sid", "sid='a73sjjvkla37jfea'", "sid=''"},
		{"sid with space", "sid='a73sjjvkla37jfea'", "sid='a b'"},
		{"creator", "creator='initiator'", "creator='someone'"},
		{"senders", "senders='both'", "senders='all'"},
		{"media", "media='audio'", "media='text'"},
		{"payload id", "id='111'", "id='128'"},
		{"payload name with space", "name='opus'", "name='op us'"},
		{"fmtp value with semicolon", "value='10'", "value='10;x=1'"},
		{"fmtp value empty", "value='10'", "value=''"},
		{"ufrag short", "ufrag='qLQMhUhwvPDdTvrS'", "ufrag='abc'"},
		{"ufrag with line break", "ufrag='qLQMhUhwvPDdTvrS'", "ufrag='qLQMhUhw&#10;a=x'"},
		{"pwd short", "pwd='xSyUjzbMbBWFHbXxdOXmJHjlFJdVbmOW'", "pwd='short'"},
		{"pwd with equals", "pwd='xSyUjzbMbBWFHbXxdOXmJHjlFJdVbmOW'", "pwd='xSyUjzbMbBWFHbXxdOXmJHjlFJd=bmOW'"},
		{"hash", "hash='sha-256'", "hash='md5'"},
		{"setup", "setup='actpass'", "setup='holdconn'"},
		{"fingerprint length", "8A:3B:", "8A:"},
		{"fingerprint not hex", "8A:3B:", "8A:ZZ:"},
		{"cname with space", "value='Ux4oNbXkUHsbvL1L'", "value='Ux4o NbX'"},
		{"msid with three parts", "value='clinkme-a73sjjvk audio'", "value='a b c'"},
		{"source parameter", "name='cname'", "name='label'"},
		{"source without cname", "<parameter name='cname' value='Ux4oNbXkUHsbvL1L'/>", ""},
		{"ssrc zero", "ssrc='3735928559'", "ssrc='0'"},
		{"group names a missing content", "<content name='0'/>", "<content name='9'/>"},
		{"group semantics", "semantics='BUNDLE'", "semantics='LS'"},
		{"no transport", "<transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' ufrag='qLQMhUhwvPDdTvrS' pwd='xSyUjzbMbBWFHbXxdOXmJHjlFJdVbmOW'>", "<other><x>"},
	}
	for _, tt := range tests {
		s := strings.Replace(base, tt.old, tt.new, 1)
		if tt.name == "no transport" {
			s = strings.Replace(s, "</transport>", "</x></other>", 1)
		}
		if s == base {
			t.Fatalf("%s: %q not in the vector", tt.name, tt.old)
		}
		var j jingle.Jingle
		if err := xml.Unmarshal([]byte(s), &j); err != nil {
			continue // refused by the parser already
		}
		if err := j.Validate(); !errors.Is(err, jingle.ErrInvalid) {
			t.Errorf("%s: Validate() = %v, want ErrInvalid", tt.name, err)
		}
	}
}

func TestCandidateValidate(t *testing.T) {
	t.Parallel()
	good := jingle.Candidate{Component: 1, Foundation: "1", IP: "192.0.2.1", Port: 9, Priority: 1, Protocol: "udp", Type: "host"}
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate(%+v) = %v, want nil", good, err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*jingle.Candidate)
	}{
		{"host name", func(c *jingle.Candidate) { c.IP = "example.org" }},
		{"mdns", func(c *jingle.Candidate) { c.IP = "1f4712db.local" }},
		{"zone", func(c *jingle.Candidate) { c.IP = "fe80::1%eth0" }},
		{"port 0", func(c *jingle.Candidate) { c.Port = 0 }},
		{"port high", func(c *jingle.Candidate) { c.Port = 65536 }},
		{"tcp", func(c *jingle.Candidate) { c.Protocol = "tcp" }},
		{"type", func(c *jingle.Candidate) { c.Type = "local" }},
		{"component", func(c *jingle.Candidate) { c.Component = 0 }},
		{"foundation", func(c *jingle.Candidate) { c.Foundation = "a b" }},
		{"priority", func(c *jingle.Candidate) { c.Priority = 0 }},
		{"host with rel-addr", func(c *jingle.Candidate) { c.RelAddr, c.RelPort = "192.0.2.2", 1 }},
		{"rel-port alone", func(c *jingle.Candidate) { c.Type, c.RelPort = "srflx", 5 }},
		{"rel-addr name", func(c *jingle.Candidate) { c.Type, c.RelAddr = "relay", "x.org" }},
	} {
		c := good
		tc.mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate(%+v) = nil, want an error", tc.name, c)
		}
	}
}

// FuzzJingle feeds arbitrary XML: whatever unmarshals and validates
// survives a marshal round trip unchanged and still validates.
func FuzzJingle(f *testing.F) {
	for _, b := range vectors(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var j jingle.Jingle
		if xml.Unmarshal(data, &j) != nil || j.Validate() != nil {
			return
		}
		out, err := xml.Marshal(&j)
		if err != nil {
			t.Fatalf("Marshal(valid) = %v", err)
		}
		var back jingle.Jingle
		if err := xml.Unmarshal(out, &back); err != nil {
			t.Fatalf("Unmarshal(Marshal(j)) = %v\n%s", err, out)
		}
		if !reflect.DeepEqual(normalize(back), normalize(j)) {
			t.Fatalf("round trip:\n got %+v\nwant %+v\n%s", back, j, out)
		}
		if err := back.Validate(); err != nil {
			t.Fatalf("Validate(round trip) = %v", err)
		}
	})
}

// normalize clears what encoding/xml does not keep across a round trip:
// empty slices read back as nil.
func normalize(j jingle.Jingle) jingle.Jingle {
	j.XMLName = xml.Name{}
	if len(j.Contents) == 0 {
		j.Contents = nil
	}
	for i := range j.Contents {
		c := &j.Contents[i]
		if c.Transport != nil {
			t := *c.Transport
			if len(t.Candidates) == 0 {
				t.Candidates = nil
			}
			c.Transport = &t
		}
		if c.Description != nil {
			d := *c.Description
			if len(d.Sources) == 0 {
				d.Sources = nil
			}
			c.Description = &d
		}
	}
	return j
}
