// Package bench holds the project's end-to-end benchmarks: each measures a
// path through the real servers and reports it as a ratio against a
// baseline measured in the same run on the same machine, because absolute
// figures from a shared 2-core machine mean little.
//
//	go test -run '^$' -bench . -benchtime 2000x ./bench/
//
// BenchmarkRelayCPU splits where the CPU time of relaying timed messages
// goes, from /proc/<pid>/stat (utime+stime): clinkd (a process of its own,
// the cmd/clinkd binary that clinkdtest.StartProcess builds and starts, so
// that the devices driving it are not counted as its), the XMPP server's
// processes, and PostgreSQL when the lab runs a private one, so run it
// without CLINK_TEST_DATABASE_URL:
//
//	env -u CLINK_TEST_DATABASE_URL go test -run '^$' -bench RelayCPU -benchtime 5000x ./bench/
//
// It reports clinkd-cpu-µs/msg against server-cpu-µs/direct-msg and their
// ratio (clinkd/server-direct), clinkd's allocated bytes per message and
// per envelope byte (alloc/envelope, from its go_memstats_alloc_bytes_total
// metric), and logs the load average: run it
// at least twice and give ranges (docs/expiry.md, "Measured"). The
// lookups' split is keydir's BenchmarkLookupCPU. CLINKDTEST_GOMAXPROCS=n
// runs the clinkd it starts with GOMAXPROCS=n (and the devices with the
// default), as docs/operators.md ("Capacity") advises where clinkd shares
// a few cores with the XMPP server:
//
//	CLINKDTEST_GOMAXPROCS=1 env -u CLINK_TEST_DATABASE_URL go test -run '^$' -bench RelayCPU -benchtime 5000x ./bench/
//
// The real servers start only when benchmarks are asked for, so `go test
// ./...` costs nothing here.
package bench
