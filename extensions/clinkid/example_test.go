package clinkid_test

import (
	"encoding/xml"
	"fmt"

	"github.com/clinkme/clinkd/extensions/clinkid"
)

func ExampleEntitlements() {
	req, _ := xml.Marshal(clinkid.Entitlements{})
	fmt.Println(string(req))
	res, _ := xml.MarshalIndent(clinkid.Entitlements{
		Account: "alice",
		Items:   []clinkid.Entitlement{{Name: "secure"}},
	}, "", "  ")
	fmt.Println(string(res))
	// Output:
	// <entitlements xmlns="urn:clinkme:clinkid:0"></entitlements>
	// <entitlements xmlns="urn:clinkme:clinkid:0" account="alice">
	//   <entitlement name="secure"></entitlement>
	// </entitlements>
}

func ExampleEntitlements_Has() {
	var e clinkid.Entitlements
	xml.Unmarshal([]byte(`<entitlements xmlns='urn:clinkme:clinkid:0' account='bob'><entitlement name='secure'/><entitlement name='future'/></entitlements>`), &e)
	fmt.Println(e.Account, e.Names(), e.Has("secure"))
	// Output: bob [secure future] true
}
