module github.com/clinkme/clinkd/keylog

go 1.26.0

require (
	filippo.io/edwards25519 v1.2.0
	github.com/clinkme/clinkd/extensions v0.1.0
	github.com/transparency-dev/merkle v0.0.2
	golang.org/x/mod v0.42.0
	mellium.im/xmpp v0.22.0
)

require (
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/text v0.44.0 // indirect
	mellium.im/reader v0.1.0 // indirect
	mellium.im/xmlstream v0.15.4 // indirect
)

replace github.com/clinkme/clinkd/extensions => ../extensions
