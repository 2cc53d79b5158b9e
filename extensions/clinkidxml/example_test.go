package clinkidxml_test

import (
	"encoding/xml"
	"fmt"

	"github.com/clinkme/clinkd/extensions/clinkidxml"
)

func ExampleEntitlements() {
	req, _ := xml.Marshal(clinkidxml.Entitlements{})
	fmt.Println(string(req))
	res, _ := xml.MarshalIndent(clinkidxml.Entitlements{
		Account: "alice",
		Items:   []clinkidxml.Entitlement{{Name: "secure"}},
	}, "", "  ")
	fmt.Println(string(res))
	// Output:
	// <entitlements xmlns="urn:clinkme:clinkid:0"></entitlements>
	// <entitlements xmlns="urn:clinkme:clinkid:0" account="alice">
	//   <entitlement name="secure"></entitlement>
	// </entitlements>
}

func ExampleEntitlements_Has() {
	var e clinkidxml.Entitlements
	xml.Unmarshal([]byte(`<entitlements xmlns='urn:clinkme:clinkid:0' account='bob'><entitlement name='secure'/><entitlement name='future'/></entitlements>`), &e)
	fmt.Println(e.Account, e.Names(), e.Has("secure"))
	// Output: bob [secure future] true
}
