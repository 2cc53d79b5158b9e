// Package lab starts real PostgreSQL, Prosody, ejabberd and coturn
// processes from generated configurations, for tests, benchmarks and
// clinklab. Nothing is mocked: clinkd is tested against the servers it
// runs beside in production.
//
// Every server:
//   - gets its configuration rendered from a template in templates/ (see
//     docs/lab.md for each setting and why), all its files in a directory
//     of its own under the caller's Dir, and ports picked free on
//     127.0.0.1 (never 5222, 5269, 3478 or 5432, which system servers
//     hold);
//   - runs as its own system user (prosody, ejabberd, postgres,
//     turnserver) when the lab runs as root, in its own process group, so
//     that stopping it reaches every process it forked;
//   - is ready only when it answers the protocol: an XMPP stream header on
//     each XMPP port, a STUN Binding and a TLS handshake for coturn, a
//     query for PostgreSQL;
//   - is stopped by whoever started it (Close), which waits until no
//     process of its group is left and kills what remains after a grace
//     period. Pid files left by a crash are removed before the next start.
//     If the owner itself dies, the kernel kills its direct children, and
//     ReapOrphans (run by labtest.Main) kills the rest on the next run.
//
// A throwaway CA (NewCA) issues the server certificates; clients verify
// them with CA.Pool and the server's name, as in production.
//
// XMPP servers (StartXMPP) require StartTLS on c2s, keep MAM archives and
// offline messages, have no s2s, and accept every declared XEP-0114
// component. Stop and Start (or Kill and Start) keep ports and data, for
// restart tests. DumpStorage returns everything a server keeps, as text,
// so tests can prove what it does and does not store.
//
// ejabberd runs `ejabberdctl foreground` with an ejabberdctl.cfg of its
// own: Erlang distribution on a port of its own bound to loopback
// (ERL_DIST_PORT, so no epmd is started to outlive it) and a private
// Erlang cookie in its own HOME.
//
// PostgreSQL is the server CLINK_TEST_DATABASE_URL names, if set;
// otherwise a throwaway cluster (initdb, pg_ctl) with trust authentication
// on loopback only.
//
// Package labtest adapts all this to go test.
package lab
