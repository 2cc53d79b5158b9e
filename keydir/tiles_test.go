package keydir_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keylog"
)

// httpTiles is a tlog.TileReader over the C2SP tiles a log serves: the
// way Go's checksum-database client reads its tiles, pointed at ours.
type httpTiles struct {
	ctx context.Context
	url string
}

func (h httpTiles) Height() int { return keylog.TileHeight }

func (h httpTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		b, err := get(h.ctx, h.url+"/"+keylog.TilePath(t))
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func (httpTiles) SaveTiles([]tlog.Tile, [][]byte) {}

func get(ctx context.Context, url string) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// TestTilesReadByTlog: x/mod's tlog.TileHashReader, which checks every
// tile it reads against the signed tree hash, reads our tiles over HTTP
// (a full level-0 tile, a partial one and a level-1 tile at 301 leaves:
// genesis and 300 publishes), and inclusion proofs built from them verify
// each record of the entry bundles. Every tile and bundle, partial ones
// too, is served as immutable (C2SP tlog-tiles), and bundles gzip-encoded
// to a client that accepts it.
func TestTilesReadByTlog(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const n = 301
	for i := range n - 1 {
		if _, _, err := l.Store.Publish(ctx, keydirtest.MustJID(t, fmt.Sprintf("t%d@lab.localhost", i)), keydirtest.FakeRSAKey(t, 3072), time.Unix(1795636800+int64(i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	msg, err := get(ctx, l.URL+"/checkpoint")
	if err != nil {
		t.Fatal(err)
	}
	cp, err := keylog.OpenCheckpoint(msg, l.Verifier)
	if err != nil || cp.Size != n {
		t.Fatalf("checkpoint = %+v, %v; want %d entries", cp, err, n)
	}
	hr := tlog.TileHashReader(tlog.Tree{N: cp.Size, Hash: cp.Hash}, httpTiles{ctx, l.URL})
	for _, bundle := range []tlog.Tile{{H: 8, L: -1, N: 0, W: 256}, {H: 8, L: -1, N: 1, W: n - 256}} {
		data, err := get(ctx, l.URL+"/"+keylog.TilePath(bundle))
		if err != nil {
			t.Fatal(err)
		}
		recs, err := keylog.ParseEntryBundle(data, bundle.W)
		if err != nil {
			t.Fatal(err)
		}
		for i, rec := range recs {
			idx := bundle.N*256 + int64(i)
			p, err := tlog.ProveRecord(cp.Size, idx, hr)
			if err != nil {
				t.Fatalf("ProveRecord(%d) through tiles = %v", idx, err)
			}
			if err := tlog.CheckRecord(p, cp.Size, cp.Hash, idx, tlog.RecordHash(rec)); err != nil {
				t.Fatalf("CheckRecord(%d) = %v", idx, err)
			}
		}
	}
	for _, c := range []struct {
		path, cache string
		status      int
	}{
		{"/tile/0/000", "public, max-age=31536000, immutable", 200},
		{"/tile/0/001.p/45", "public, max-age=31536000, immutable", 200},
		{"/tile/1/000.p/1", "public, max-age=31536000, immutable", 200},
		{"/tile/entries/000", "public, max-age=31536000, immutable", 200},
		{"/tile/entries/001.p/45", "public, max-age=31536000, immutable", 200},
		{"/tile/0/001", "", 404},
		{"/tile/0/001.p/46", "", 404},
		{"/tile/2/000.p/1", "", 404},
		{"/tile/0/x000/001", "", 404},
		{"/checkpoint", "no-cache", 200},
	} {
		resp, err := http.Get(l.URL + c.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status || c.cache != "" && resp.Header.Get("Cache-Control") != c.cache {
			t.Errorf("GET %s = %d, Cache-Control %q; want %d, %q", c.path, resp.StatusCode, resp.Header.Get("Cache-Control"), c.status, c.cache)
		}
	}
	// gzip: a bundle is compressed for a client that asks, to the same
	// bytes; a hash tile never is (hashes do not compress).
	plain, err := get(ctx, l.URL+"/tile/entries/000")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, accept, encoding string
	}{
		{"/tile/entries/000", "gzip", "gzip"},
		{"/tile/entries/000", "br, gzip;q=0.5", "gzip"},
		{"/tile/entries/000", "gzip;q=0", ""},
		{"/tile/entries/000", "", ""},
		{"/tile/0/000", "gzip", ""},
	} {
		req, _ := http.NewRequest(http.MethodGet, l.URL+c.path, nil)
		if c.accept != "" {
			req.Header.Set("Accept-Encoding", c.accept)
		}
		// A transport that leaves the encoding to the test.
		resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := resp.Header.Get("Content-Encoding"); got != c.encoding {
			t.Errorf("GET %s, Accept-Encoding %q: Content-Encoding %q, want %q", c.path, c.accept, got, c.encoding)
			continue
		}
		if c.encoding == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(body, plain) || resp.Header.Get("Vary") != "Accept-Encoding" {
				t.Errorf("GET %s gzip: %d bytes unzipped, Vary %q; want the %d plain bytes", c.path, len(body), resp.Header.Get("Vary"), len(plain))
			}
		}
	}
}
