// Package bench holds the project's end-to-end benchmarks: each measures a
// path through the real servers and reports it as a ratio against a
// baseline measured in the same run on the same machine, because absolute
// figures from a shared 2-core machine mean little.
//
//	go test -run '^$' -bench . -benchtime 2000x ./bench/
//
// The real servers start only when benchmarks are asked for, so `go test
// ./...` costs nothing here.
package bench
