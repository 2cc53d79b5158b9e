// Package abuse holds end-to-end attack tests: each plays what an account
// holder or a stranger would try against clinkd (an open relay, spending
// someone else's quotas, a federated sender, an address nobody uses, a
// sender that floods while the database hangs) through the real Prosody,
// ejabberd and PostgreSQL, and asserts that the promise holds. Tests of
// one feature's own limits live with the feature; these cross features.
// docs/operators.md ("Limits and abuse") names the test of every limit.
//
// It has no code: `go test ./abuse/` runs the attacks.
package abuse
