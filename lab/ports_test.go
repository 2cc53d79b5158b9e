package lab

import "testing"

// TestPortPickerDistinct: one server's ports never repeat, even where
// freePort alone would return a port twice.
func TestPortPickerDistinct(t *testing.T) {
	t.Parallel()
	p := portPicker{}
	seen := map[int]bool{}
	for range 200 {
		port, err := p.next()
		if err != nil {
			t.Fatal(err)
		}
		if seen[port] {
			t.Fatalf("next() = %d twice", port)
		}
		seen[port] = true
	}
}
