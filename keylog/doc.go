// Package keylog is the key directory's log as every verifier sees it,
// specified in docs/protocol.md: the leaf record and the label it carries,
// the signed checkpoint (C2SP tlog-checkpoint), the tiles and entry
// bundles the log is served in (C2SP tlog-tiles), the form a published
// public key must have, the note keys that sign checkpoints, and an
// in-memory store of tlog hashes that rebuilds a tree from its records.
//
// The server (keydir), its PostgreSQL store (keydir/logdb) and the
// auditor (keydir/audit) share this package and nothing else, so an audit
// verifies the log through no code path of the server. To keep it that
// way keylog imports only the standard library, golang.org/x/mod/sumdb,
// mellium.im/xmpp/jid and extensions/keydirxml (a test holds it to that).
// Devices verify with their own code (client/keys.go, on
// transparency-dev/merkle); the test vectors tie the two together.
package keylog
