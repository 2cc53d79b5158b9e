package turncred_test

import (
	"testing"
	"time"

	"github.com/clinkme/clinkd/turncred"
)

// The vector was computed independently:
//
//	printf '%s' "1700000000:alice@example.org" | openssl dgst -sha1 -hmac "north-secret-0123456789" -binary | base64
func TestCredentialVector(t *testing.T) {
	t.Parallel()
	user, pass := turncred.Credential([]byte("north-secret-0123456789"), "alice@example.org", time.Unix(1700000000, 0))
	if user != "1700000000:alice@example.org" || pass != "qX6eR6Q+XZxaPsLwE8/dLH3NxD8=" {
		t.Errorf("Credential = %q, %q; want 1700000000:alice@example.org, qX6eR6Q+XZxaPsLwE8/dLH3NxD8=", user, pass)
	}
}

func TestParseURI(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in        string
		typ, host string
		port      int
		transport string
		wantErr   bool
	}{
		{"stun:turn.example.org", "stun", "turn.example.org", 3478, "udp", false},
		{"turn:turn.example.org:3478?transport=tcp", "turn", "turn.example.org", 3478, "tcp", false},
		{"turns:turn.example.org", "turns", "turn.example.org", 5349, "tcp", false},
		{"turn:127.0.0.1:40000", "turn", "127.0.0.1", 40000, "udp", false},
		{"turns:h:5349?transport=udp", "", "", 0, "", true},
		{"turn:h:99999", "", "", 0, "", true},
		{"http://h", "", "", 0, "", true},
		{"turn:", "", "", 0, "", true},
		{"turn:h?transport=sctp", "", "", 0, "", true},
	}
	for _, tt := range tests {
		svc, err := turncred.ParseURI(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParseURI(%q) = %+v, want error", tt.in, svc)
			}
			continue
		}
		if err != nil || svc.Type != tt.typ || svc.Host != tt.host || svc.Port != tt.port || svc.Transport != tt.transport {
			t.Errorf("ParseURI(%q) = %+v, %v; want %s %s %d %s", tt.in, svc, err, tt.typ, tt.host, tt.port, tt.transport)
		}
	}
}
