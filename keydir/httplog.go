package keydir

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/internal/httpjson"
	"github.com/clinkme/clinkd/keylog"
)

// LogHandler serves the log read-only in the C2SP tlog-tiles layout,
// relative to wherever it is mounted (the daemon strips /keydir/log):
//
//	GET /checkpoint                    the signed checkpoint of the current size
//	GET /tile/<L>/<N>[.p/<W>]          hash tiles, height 8
//	GET /tile/entries/<N>[.p/<W>]      entry bundles: uint16-length-prefixed leaf records
//
// Every tile and bundle is immutable, partial ones included (a width's
// bytes never change; a client moves on to a wider one by asking for
// it), as tlog-tiles says; the checkpoint is never cached. Entry bundles
// are gzip-compressed for clients that accept it. While the directory is
// not ready (Ready) every path answers 503: a rolled-back database must
// not be served as the log. Nothing here lists JIDs: entries hold labels
// and VRF indices, not addresses.
func (d *Directory) LogHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /checkpoint", d.serveCheckpoint)
	mux.HandleFunc("GET /tile/", d.serveTile)
	return mux
}

func (d *Directory) notReady(w http.ResponseWriter, r *http.Request) bool {
	if reason := d.serving(r.Context()); reason != "" {
		httpjson.Error(w, http.StatusServiceUnavailable, "not_ready", "the key directory is not serving: its database does not extend the last signed checkpoint")
		return true
	}
	return false
}

func (d *Directory) serveCheckpoint(w http.ResponseWriter, r *http.Request) {
	if d.notReady(w, r) {
		return
	}
	msg, _, err := d.Checkpoint(r.Context())
	if err != nil {
		if d.notReady(w, r) {
			return
		}
		d.log.Error("keydir: http checkpoint", "err", err)
		httpjson.Error(w, http.StatusInternalServerError, "internal", "the checkpoint could not be made")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	w.Write(msg)
}

func (d *Directory) serveTile(w http.ResponseWriter, r *http.Request) {
	t, err := keylog.ParseTilePath(strings.TrimPrefix(r.URL.Path, "/"))
	if err != nil {
		httpjson.Error(w, http.StatusNotFound, "not_found", "not a tile path")
		return
	}
	if d.notReady(w, r) {
		return
	}
	ctx := r.Context()
	size, err := d.store.Size(ctx)
	if err != nil {
		d.log.Error("keydir: http tile", "err", err)
		httpjson.Error(w, http.StatusInternalServerError, "internal", "the log could not be read")
		return
	}
	// Hashes at tree level 8·L: one per 2^(8L) leaves.
	var avail int64
	if t.L == keylog.EntriesLevel {
		avail = size
	} else {
		avail = size >> (keylog.TileHeight * uint(t.L))
	}
	// Compare N first: N·256 overflows int64 for the largest N a path
	// can spell.
	if t.N > avail/keylog.TileWidth || t.N*keylog.TileWidth+int64(t.W) > avail {
		httpjson.Error(w, http.StatusNotFound, "not_found", "the log has not reached this tile")
		return
	}
	start := t.N * keylog.TileWidth
	var data []byte
	if t.L == keylog.EntriesLevel {
		var recs [][]byte
		recs, err = d.store.ReadRecords(ctx, start, t.W)
		if err == nil {
			data = keylog.AppendEntryBundle(make([]byte, 0, t.W*220), recs...)
		}
	} else {
		data, err = tlog.ReadTileData(t, d.store.HashReader(ctx))
	}
	if err != nil {
		d.log.Error("keydir: http tile", "path", keylog.TilePath(t), "err", err)
		httpjson.Error(w, http.StatusInternalServerError, "internal", "the log could not be read")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	if t.L == keylog.EntriesLevel {
		// Records are text and compress well; hash tiles do not.
		h.Set("Vary", "Accept-Encoding")
		if acceptsGzip(r) {
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			zw.Write(data)
			zw.Close()
			data = buf.Bytes()
			h.Set("Content-Encoding", "gzip")
		}
	}
	h.Set("Content-Length", strconv.Itoa(len(data)))
	w.Write(data)
}

// acceptsGzip reports whether the request's Accept-Encoding allows gzip
// (RFC 9110: listed without q=0).
func acceptsGzip(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept-Encoding") {
		for _, part := range strings.Split(v, ",") {
			coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
				continue
			}
			q := strings.ReplaceAll(params, " ", "")
			return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
		}
	}
	return false
}
