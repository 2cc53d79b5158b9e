package keydirxml_test

import (
	"encoding/xml"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/extensions/keydirxml"
)

// FuzzDecode feeds arbitrary XML to every payload type the server or the
// device decodes, then to its structural check. Nothing may panic, and a
// payload that decodes must survive a marshal and decode round trip with
// the same verdict from Validate, and a v1 lookup's AppendXML must write
// what Marshal writes.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`<publish xmlns='urn:clinkme:keydir:0'><key>MIIBojANBgkqhkiG9w0BAQEFAAOCAY8AMIIBigKCAYEA</key></publish>`,
		`<lookup xmlns='urn:clinkme:keydir:0'><jid>alice@example.org</jid><jid>bob@example.org</jid></lookup>`,
		`<lookup xmlns='urn:clinkme:keydir:0'><checkpoint>o&#xA;1&#xA;h&#xA;</checkpoint><entry jid='a@b' status='found' index='0' time='1' fingerprint='5b71a88df7275813d065ebf04eae0914b5643f9e0407937eb432af1b68d9c020'><key>AAAA</key><proof><hash>AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=</hash></proof></entry><entry jid='c@d' status='none'/></lookup>`,
		`<consistency xmlns='urn:clinkme:keydir:0' old='3' new='7'><hash>AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=</hash></consistency>`,
		`<history xmlns='urn:clinkme:keydir:0' jid='a@b'><record index='0' kind='reset' time='5' fingerprint='5b71a88df7275813d065ebf04eae0914b5643f9e0407937eb432af1b68d9c020'><proof/></record></history>`,
		`<checkpoint xmlns='urn:clinkme:keydir:0'/>`,
		`<entry xmlns='urn:clinkme:keydir:0' jid='a@b' status='found' index='-1'/>`,
		`<publish xmlns='urn:clinkme:keydir:1'><key>MIIB</key></publish>`,
		`<lookup xmlns='urn:clinkme:keydir:1'><checkpoint>o&#xA;1&#xA;h&#xA;</checkpoint><head index='0' record='Y2xpbmttZQ=='>AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=</head><entry jid='a@b' status='found' vrf='` + strings.Repeat("A", 108) + `' version='1' index='0' time='1' fingerprint='5b71a88df7275813d065ebf04eae0914b5643f9e0407937eb432af1b68d9c020' record='v1' root='AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='><key>AAAA</key><map>AQAA</map><proof></proof></entry><entry jid='c@d' status='none' vrf='` + strings.Repeat("A", 108) + `'><map>AgAA</map></entry></lookup>`,
		`<history xmlns='urn:clinkme:keydir:1' from='2'><record version='1' index='0' kind='publish' time='5' fingerprint='5b71a88df7275813d065ebf04eae0914b5643f9e0407937eb432af1b68d9c020' record='v0'><proof></proof></record></history>`,
		`<consistency xmlns='urn:clinkme:keydir:1' old='1' new='2'>AAAA</consistency>`,
		`<lookup xmlns='urn:clinkme:keydir:1' known='1048577'><jid>alice@example.org</jid></lookup>`,
		`<lookup xmlns='urn:clinkme:keydir:1' unchanged='1048577'/>`,
		`<lookup xmlns='urn:clinkme:keydir:1' known='-1' unchanged='+07'><jid>a@b</jid></lookup>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		check := func(v any, validate func() error) {
			if err := xml.Unmarshal(in, v); err != nil {
				return
			}
			first := validate()
			out, err := xml.Marshal(v)
			if err != nil {
				return // e.g. invalid characters kept in a string field
			}
			if err := xml.Unmarshal(out, v); err != nil {
				t.Fatalf("re-decoding %q: %v", out, err)
			}
			if second := validate(); (first == nil) != (second == nil) {
				t.Fatalf("Validate changed verdict after a round trip: %v, then %v (%q)", first, second, out)
			}
		}
		var p keydirxml.Publish
		check(&p, p.Validate)
		var l keydirxml.Lookup
		check(&l, func() error { return l.Validate(20) })
		var c keydirxml.Consistency
		check(&c, c.Validate)
		var h keydirxml.History
		check(&h, func() error {
			for i := range h.Records {
				if err := h.Records[i].Validate(); err != nil {
					return err
				}
			}
			return nil
		})
		var lr keydirxml.Lookup
		check(&lr, func() error {
			for i := range lr.Entries {
				if err := lr.Entries[i].Validate(); err != nil {
					return err
				}
			}
			return nil
		})
		var p1 keydirxml.Publish1
		check(&p1, p1.Validate)
		var l1 keydirxml.Lookup1
		check(&l1, func() error { return l1.Validate(20) })
		var c1 keydirxml.Consistency1
		check(&c1, c1.Validate)
		var lr1 keydirxml.Lookup1
		check(&lr1, func() error {
			if err := lr1.ValidateResult(); err != nil {
				return err
			}
			if lr1.Head != nil {
				if err := lr1.Head.Validate(); err != nil {
					return err
				}
			}
			for i := range lr1.Entries {
				if err := lr1.Entries[i].Validate(); err != nil {
					return err
				}
			}
			return nil
		})
		var lx keydirxml.Lookup1
		if xml.Unmarshal(in, &lx) == nil {
			// What the server writes as bytes is what Marshal writes.
			if want, err := xml.Marshal(lx); err == nil {
				if got := lx.AppendXML(nil); string(got) != string(want) {
					t.Fatalf("AppendXML = %q, Marshal %q", got, want)
				}
				checkAnswerParts(t, lx)
			}
		}
		var h1 keydirxml.History1
		check(&h1, func() error {
			for i := range h1.Records {
				if err := h1.Records[i].Validate(); err != nil {
					return err
				}
			}
			return nil
		})
	})
}
