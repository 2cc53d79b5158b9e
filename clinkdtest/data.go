package clinkdtest

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/clinkme/clinkd/client/envelope"
)

// Identity returns a device identity for jid with one of the fixed RSA
// keys of client/envelope/testdata/keys (alice, bob, carol, dave,
// mallory): generating 3072-bit keys in every test would cost seconds.
func Identity(t testing.TB, key, jid string) envelope.Identity {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "client", "envelope", "testdata", "keys", key+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("no PEM in key %s", key)
	}
	var priv *rsa.PrivateKey
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		priv, _ = k.(*rsa.PrivateKey)
	} else if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		priv = k
	}
	if priv == nil {
		t.Fatalf("key %s is not an RSA private key", key)
	}
	id, err := envelope.NewIdentity(jid, priv)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// DumpDatabase returns every row of every table of the database at url
// as JSON text, for tests that prove what is (not) stored.
func DumpDatabase(t testing.TB, url string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
		FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, tbl := range tables {
		rows, err := conn.Query(ctx, `SELECT row_to_json(t)::text FROM `+tbl+` t`)
		if err != nil {
			t.Fatal(err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString("== " + tbl + "\n")
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
