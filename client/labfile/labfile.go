// Package labfile reads and writes lab.json, the file in which a lab
// deployment (clinklab) tells devices and operators how to reach it: the
// XMPP server, clinkd's component, its public listener and key log, coturn
// and the demo accounts.
//
// It lives with the device SDK so that clinkctl and apps can read a lab
// without linking anything of the server; the lab writes it with Write.
// The file holds passwords: Write makes it 0600.
package labfile

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
)

// Info is what lab.json holds.
type Info struct {
	Server    string `json:"server"` // "prosody" or "ejabberd"
	Domain    string `json:"domain"`
	C2S       string `json:"c2s"`
	Component string `json:"component"`
	CAFile    string `json:"ca_file"`
	AdminURL  string `json:"admin_url"`
	PublicURL string `json:"public_url"`
	// VerifierKey is the key directory's verifier key: the note verifier
	// key that signs the log's checkpoints (devices: DeviceConfig.
	// VerifierKey; auditors: clinkd keys audit --key). VRFKey is its VRF
	// public key, which devices need to check each JID's map index
	// (DeviceConfig.VRFKey). Files written before they had these names
	// call them keylog_verifier and keylog_vrf_key; Read takes both.
	// KeyLogURL is where auditors read the log.
	VerifierKey string `json:"verifier_key"`
	VRFKey      string `json:"vrf_key"`
	KeyLogURL   string `json:"keylog_url"`
	// Witnesses are the cosignature/v1 verifier keys of the witnesses
	// that cosign the log's checkpoints, and WitnessThreshold how many of
	// them devices and auditors require on every checkpoint
	// (DeviceConfig.Witnesses; 0: none).
	Witnesses        []string `json:"witnesses,omitempty"`
	WitnessThreshold int      `json:"witness_threshold,omitempty"`
	TURN             TURN     `json:"turn"`
	Users            []User   `json:"users"`
}

// UnmarshalJSON reads lab.json, with the keys under their old names
// (keylog_verifier, keylog_vrf_key) too.
func (i *Info) UnmarshalJSON(b []byte) error {
	type plain Info
	var v struct {
		plain
		OldVerifier string `json:"keylog_verifier"`
		OldVRF      string `json:"keylog_vrf_key"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*i = Info(v.plain)
	if i.VerifierKey == "" {
		i.VerifierKey = v.OldVerifier
	}
	if i.VRFKey == "" {
		i.VRFKey = v.OldVRF
	}
	return nil
}

// User is a demo account.
type User struct {
	JID      string `json:"jid"`
	Password string `json:"password"`
}

// TURN locates coturn.
type TURN struct {
	Realm string `json:"realm"`
	UDP   string `json:"udp"`
	TCP   string `json:"tcp"`
	TLS   string `json:"tls"`
}

// Read reads a lab.json.
func Read(path string) (Info, error) {
	var info Info
	b, err := os.ReadFile(path)
	if err != nil {
		return info, fmt.Errorf("labfile: %w", err)
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("labfile: %s: %w", path, err)
	}
	return info, nil
}

// Write replaces the file at path with info, atomically, mode 0600.
func Write(path string, info Info) error {
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return fmt.Errorf("labfile: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("labfile: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("labfile: write %s: %w", path, err)
	}
	return nil
}

// User returns the demo account whose JID is name or starts with name@.
func (i Info) User(name string) (User, bool) {
	for _, u := range i.Users {
		if u.JID == name || (len(u.JID) > len(name) && u.JID[:len(name)+1] == name+"@") {
			return u, true
		}
	}
	return User{}, false
}

// LoopbackOnly reports whether every address in the deployment is on
// loopback, as the lab promises.
func (i Info) LoopbackOnly() bool {
	for _, a := range []string{i.C2S, i.TURN.UDP, i.TURN.TCP, i.TURN.TLS} {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			return false
		}
		ip := net.ParseIP(host)
		if ip == nil || !ip.IsLoopback() {
			return false
		}
	}
	return true
}
