// Package clinkid is the ClinkID account service: accounts registered and
// managed over HTTPS, app tokens, ClinkMe entitlements, and the auth
// bridges that let Prosody and ejabberd log ClinkID accounts in without
// ever storing a ClinkID password or hash. docs/clinkid.md is the
// specification: the HTTP API with every error code, the argon2id
// parameters against RFC 9106, the lock-out policy, the token lifecycle and
// how to install each bridge.
//
// One Service, backed by PostgreSQL, serves three doors:
//
//   - Handler: the JSON API under /clinkid/v1/ on clinkd's public HTTPS
//     listener (register, login, logout, change password, delete, the
//     admin entitlement calls and the Prosody bridge's check).
//   - Extauth: ejabberd's external authentication protocol on stdin and
//     stdout, run by `clinkd extauth` as a pool of processes that share
//     the database with clinkd.
//   - Register: the urn:clinkme:clinkid:0 IQ a device uses to read its own
//     entitlements, and HasEntitlement for other features of clinkd.
//
// Passwords are hashed with argon2id (golang.org/x/crypto/argon2) in PHC
// string format, at most Config.HashConcurrency at a time, which bounds
// the memory a login storm can take. App tokens are 256-bit random
// strings stored as SHA-256 hashes. Unknown accounts cost one dummy
// argon2id verification and give the same error as a wrong password, and
// failed attempts lock an account name whether or not it exists, so
// neither error text, timing nor lock-out tells whether an account exists.
// Registration alone reveals that a name is taken; it is rate-limited per
// client address.
package clinkid
