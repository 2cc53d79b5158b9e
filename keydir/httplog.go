package keydir

import (
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
// Full tiles never change and are served as immutable; a partial tile is
// served for any width the log has reached, and the checkpoint is never
// cached. Nothing here lists JIDs: entries hold labels, not addresses.
func (d *Directory) LogHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /checkpoint", d.serveCheckpoint)
	mux.HandleFunc("GET /tile/", d.serveTile)
	return mux
}

func (d *Directory) serveCheckpoint(w http.ResponseWriter, r *http.Request) {
	msg, _, err := d.Checkpoint(r.Context())
	if err != nil {
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
			data = keylog.AppendEntryBundle(make([]byte, 0, t.W*180), recs...)
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
	h.Set("Content-Length", strconv.Itoa(len(data)))
	if t.W == keylog.TileWidth {
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		// A partial tile's bytes never change either, but clients should
		// move on to the wider one as the log grows.
		h.Set("Cache-Control", "public, max-age=60")
	}
	w.Write(data)
}
