package expiryxml_test

import (
	"strings"
	"testing"

	"github.com/clinkme/clinkd/extensions/expiryxml"
)

func TestCheckDeviceID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"a", true},
		{"clinkctl-0123456789abcdef", true},
		{"Phone_2.backup-1", true},
		{strings.Repeat("x", expiryxml.MaxDeviceIDLen), true},
		{"", false},
		{strings.Repeat("x", expiryxml.MaxDeviceIDLen+1), false},
		{"has space", false},
		{"slash/", false},
		{"at@", false},
		{"é", false},
		{"nul\x00", false},
	} {
		if err := expiryxml.CheckDeviceID(tc.id); (err == nil) != tc.ok {
			t.Errorf("CheckDeviceID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
	}
}

func FuzzCheckDeviceID(f *testing.F) {
	f.Add("clinkctl-0123")
	f.Add("")
	f.Fuzz(func(t *testing.T, id string) {
		err := expiryxml.CheckDeviceID(id)
		if err != nil && len(id) >= 4 && strings.Contains(err.Error(), id) {
			t.Fatalf("CheckDeviceID(%q) quotes the id: %v", id, err)
		}
		if err == nil && (len(id) == 0 || len(id) > expiryxml.MaxDeviceIDLen || strings.ContainsAny(id, " /@\x00")) {
			t.Fatalf("CheckDeviceID(%q) = nil", id)
		}
	})
}
