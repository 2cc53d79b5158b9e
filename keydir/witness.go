package keydir

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/keylog"
)

// Witnesses: clinkd submits every checkpoint it is about to serve to
// each configured witness over C2SP tlog-witness (POST add-checkpoint,
// with the consistency proof from the size that witness last cosigned),
// verifies the cosignature/v1 lines it gets back and serves the
// checkpoint with them appended. A device or auditor that requires k
// cosignatures then refuses a checkpoint that k witnesses did not see
// extend what they saw before: a split view needs the witnesses' help.
//
// The choice between latency and freshness: an answer is always proven
// against the checkpoint of the log's current size (the map in memory is
// the current one), so clinkd waits for the cosignatures of a size it
// has not had cosigned before it answers with it, bounded by
// WitnessConfig.Timeout. Each size is cosigned once and the result kept,
// so lookups at an unchanged size do not wait; a publish waits for the
// cosignature of the size it made (its answer must be cosigned for a
// device that requires witnesses to accept its own key). A witness that
// does not answer in time, or refuses, is left out of that checkpoint,
// which is still served (devices without a policy, or with a lower
// threshold, accept it); the size is tried again after retryBackoff and
// at every Run tick. docs/keydir.md, "Witnesses".

// WitnessConfig lists the witnesses a Directory has cosign its
// checkpoints. The zero value has none: checkpoints are served with the
// log's signature alone.
type WitnessConfig struct {
	Witnesses []Witness
	// Threshold is how many valid cosignatures a checkpoint should
	// carry, the threshold the operator gives devices: fewer is logged
	// and shown by clinkd_keydir_checkpoint_cosignatures (default: all
	// the witnesses).
	Threshold int
	// Timeout bounds the cosigning of one checkpoint, every witness at
	// once, retries included (default DefaultWitnessTimeout).
	Timeout time.Duration
	// Client makes the requests (default: a client of its own, with
	// keep-alive connections).
	Client *http.Client
}

// A Witness is one C2SP tlog-witness.
type Witness struct {
	// URL is its submission prefix: add-checkpoint is POSTed to
	// URL/add-checkpoint.
	URL string
	// Verifier is its cosignature/v1 key (keylog.ParseCosignatureVerifier).
	Verifier *keylog.CosignatureVerifier
}

// DefaultWitnessTimeout is WitnessConfig.Timeout's default: a witness on
// another continent answers in well under a second; one that takes
// longer is treated as down for that checkpoint rather than holding a
// publish for long.
const DefaultWitnessTimeout = 5 * time.Second

// retryBackoff is how long a checkpoint that got fewer cosignatures than
// the threshold is served as it is before a request tries the witnesses
// again: a witness that is down must not cost every request a timeout.
const retryBackoff = 5 * time.Second

// maxConflictRetries bounds the add-checkpoint requests to one witness
// for one checkpoint after a 409: one with the size the witness reported
// is enough for an honest log; a second 409 means someone else is
// submitting this log's checkpoints at the same moment.
const maxConflictRetries = 2

// Outcomes of one witness for one checkpoint, the label of
// clinkd_keydir_witness_requests_total.
const (
	witnessOK          = "ok"          // cosigned
	witnessAhead       = "ahead"       // 409: it has cosigned a larger tree of this log than this checkpoint's
	witnessConflict    = "conflict"    // 409 after the retries
	witnessBadProof    = "bad_proof"   // 422: our tree does not extend what it saw: a fork, or a rewritten log
	witnessRefused     = "refused"     // 403 or 404: it does not know this log or its key
	witnessBadRequest  = "bad_request" // 400
	witnessBadResponse = "bad_response"
	witnessDown        = "error" // no answer in time, a network error or a 5xx
)

type witnessState struct {
	Witness
	size    int64  // its size of this log, as last learned (0: unknown)
	outcome string // its last outcome, logged when it changes
}

type cosigned struct {
	size  int64
	msg   []byte // the signed checkpoint with the valid cosignatures
	valid int
	at    time.Time
}

// cosigner has the checkpoints cosigned; one cosigning at a time.
type cosigner struct {
	cfg      WitnessConfig
	log      *slog.Logger
	now      func() time.Time
	requests *prometheus.CounterVec
	count    prometheus.Gauge

	mu  sync.Mutex
	ws  []*witnessState
	cur *cosigned // the newest checkpoint cosigned
}

func newCosigner(cfg WitnessConfig, log *slog.Logger, now func() time.Time) (*cosigner, error) {
	names := map[string]bool{}
	c := &cosigner{log: log, now: now}
	for _, w := range cfg.Witnesses {
		if w.Verifier == nil || !strings.HasPrefix(w.URL, "http://") && !strings.HasPrefix(w.URL, "https://") {
			return nil, fmt.Errorf("keydir: witness %q: want an http(s) URL and a verifier key", w.URL)
		}
		if names[w.Verifier.Name()] {
			return nil, fmt.Errorf("keydir: witness %q is listed twice", w.Verifier.Name())
		}
		names[w.Verifier.Name()] = true
		w.URL = strings.TrimSuffix(w.URL, "/")
		c.ws = append(c.ws, &witnessState{Witness: w})
	}
	if cfg.Threshold == 0 {
		cfg.Threshold = len(cfg.Witnesses)
	}
	if cfg.Threshold < 0 || cfg.Threshold > len(cfg.Witnesses) {
		return nil, fmt.Errorf("keydir: witness threshold %d with %d witnesses", cfg.Threshold, len(cfg.Witnesses))
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultWitnessTimeout
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2, IdleConnTimeout: 90 * time.Second}}
	}
	c.cfg = cfg
	c.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "clinkd_keydir_witness_requests_total",
		Help: "Checkpoints submitted to each witness, by outcome (ok, ahead, conflict, bad_proof, refused, bad_request, bad_response, error).",
	}, []string{"witness", "outcome"})
	c.count = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "clinkd_keydir_checkpoint_cosignatures",
		Help: "Valid witness cosignatures on the newest checkpoint served; below clinkd_keydir_witness_threshold devices that require witnesses refuse it.",
	})
	return c, nil
}

func (c *cosigner) register(reg prometheus.Registerer) {
	if reg == nil || len(c.ws) == 0 {
		return
	}
	threshold := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "clinkd_keydir_witness_threshold",
		Help: "Cosignatures a checkpoint should carry (keydir.witness.threshold).",
	})
	threshold.Set(float64(c.cfg.Threshold))
	reg.MustRegister(c.requests, c.count, threshold)
}

// cosign returns sc's note with the cosignatures of the witnesses that
// cosigned it, asking them unless that size was cosigned already (or
// was tried less than retryBackoff ago). hr reads the log's hashes, for
// the consistency proofs. It returns errGrew when a witness has cosigned
// a larger tree than sc's that the database now holds: the answer must
// be proven at the current size again.
func (c *cosigner) cosign(ctx context.Context, sc *signedCheckpoint, hr tlog.HashReader, size func(context.Context) (int64, error)) ([]byte, error) {
	if len(c.ws) == 0 {
		return sc.msg, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur := c.cur; cur != nil {
		switch {
		case cur.size > sc.cp.Size:
			return nil, errGrew
		case cur.size == sc.cp.Size && (cur.valid >= len(c.ws) || cur.valid >= c.cfg.Threshold && c.cfg.Threshold > 0 || c.now().Sub(cur.at) < retryBackoff):
			return cur.msg, nil
		}
	}
	// The witnesses' answers are kept for every later request: one
	// device giving up must not waste them.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout)
	defer cancel()
	type result struct {
		sig     *note.Signature
		outcome string
		detail  string
	}
	results := make([]result, len(c.ws))
	var wg sync.WaitGroup
	for i, w := range c.ws {
		wg.Go(func() {
			sig, outcome, detail := c.submit(ctx, w, sc, hr)
			results[i] = result{sig, outcome, detail}
		})
	}
	wg.Wait()
	var (
		sigs    []note.Signature
		aheadOf int64
	)
	for i, r := range results {
		w := c.ws[i]
		c.requests.WithLabelValues(w.Verifier.Name(), r.outcome).Inc()
		if r.outcome != w.outcome {
			lvl := slog.LevelWarn
			if r.outcome == witnessOK {
				lvl = slog.LevelInfo
			} else if r.outcome == witnessAhead || r.outcome == witnessBadProof {
				lvl = slog.LevelError // another tree of this log was cosigned: a fork, or a rolled-back log
			}
			c.log.Log(ctx, lvl, "keydir: witness "+r.outcome, "witness", w.Verifier.Name(), "size", sc.cp.Size, "detail", r.detail)
			w.outcome = r.outcome
		}
		if r.sig != nil {
			sigs = append(sigs, *r.sig)
		}
		if r.outcome == witnessAhead {
			aheadOf = max(aheadOf, w.size)
		}
	}
	if aheadOf > sc.cp.Size {
		if now, err := size(ctx); err == nil && now >= aheadOf {
			return nil, errGrew
		}
	}
	cur := &cosigned{size: sc.cp.Size, msg: keylog.AppendCosignatures(sc.msg, sigs), valid: len(sigs), at: c.now()}
	if c.cur == nil || c.cur.size != cur.size || c.cur.valid != cur.valid {
		if cur.valid < c.cfg.Threshold {
			c.log.Error("keydir: checkpoint served with too few witness cosignatures: devices that require them refuse it",
				"size", cur.size, "cosignatures", cur.valid, "threshold", c.cfg.Threshold)
		}
	}
	c.cur = cur
	c.count.Set(float64(cur.valid))
	return cur.msg, nil
}

// submit asks one witness to cosign sc: from the size it last
// cosigned (or 0), again from the size it reports on a 409 when that is
// not larger than sc's. It returns the verified cosignature line.
func (c *cosigner) submit(ctx context.Context, w *witnessState, sc *signedCheckpoint, hr tlog.HashReader) (*note.Signature, string, string) {
	old := w.size
	if old > sc.cp.Size {
		old = 0 // learn its size again
	}
	text := string(sc.cp.Marshal())
	for attempt := 0; ; attempt++ {
		var proof tlog.TreeProof
		if old > 0 && old < sc.cp.Size {
			p, err := tlog.ProveTree(sc.cp.Size, old, hr)
			if err != nil {
				return nil, witnessDown, fmt.Sprintf("consistency proof %d→%d: %v", old, sc.cp.Size, err)
			}
			proof = p
		}
		status, body, err := c.post(ctx, w.URL+"/add-checkpoint", keylog.AddCheckpointRequest(old, proof, sc.msg))
		if err != nil {
			return nil, witnessDown, err.Error()
		}
		switch status {
		case http.StatusOK:
			sigs, err := keylog.ParseCosignatures(body)
			if err != nil {
				return nil, witnessBadResponse, err.Error()
			}
			for _, s := range sigs {
				if w.Verifier.VerifySignature(text, s) {
					w.size = sc.cp.Size
					return &s, witnessOK, ""
				}
			}
			return nil, witnessBadResponse, "no valid cosignature of its key in the answer"
		case http.StatusConflict:
			n, err := keylog.ParseTreeSize(body)
			if err != nil {
				return nil, witnessBadResponse, err.Error()
			}
			w.size = n
			if n > sc.cp.Size {
				return nil, witnessAhead, fmt.Sprintf("it has cosigned a tree of %d entries, this checkpoint has %d", n, sc.cp.Size)
			}
			if attempt == maxConflictRetries {
				return nil, witnessConflict, fmt.Sprintf("still 409 (size %d) after %d retries", n, attempt)
			}
			old = n
		case http.StatusUnprocessableEntity:
			w.size = 0
			return nil, witnessBadProof, fmt.Sprintf("the consistency proof from %d to %d does not verify against the tree it saw", old, sc.cp.Size)
		case http.StatusForbidden, http.StatusNotFound:
			return nil, witnessRefused, fmt.Sprintf("%d: it does not know this log's origin or key (witnessctl add-log / add-key)", status)
		case http.StatusBadRequest:
			return nil, witnessBadRequest, fmt.Sprintf("400 with old size %d", old)
		default:
			return nil, witnessDown, fmt.Sprintf("HTTP %d", status)
		}
	}
}

func (c *cosigner) post(ctx context.Context, url string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	resp, err := c.cfg.Client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, keylog.MaxWitnessResponse+1))
	if err != nil {
		return 0, nil, err
	}
	if len(b) > keylog.MaxWitnessResponse {
		return 0, nil, errors.New("answer too long")
	}
	return resp.StatusCode, b, nil
}

// WitnessStatus is what the directory knows of one witness.
type WitnessStatus struct {
	Name    string
	Size    int64  // its size of this log, as last learned
	Outcome string // its last outcome (ok, ahead, bad_proof, …; "" before the first)
}

// Witnesses returns the status of each configured witness, and how many
// valid cosignatures the newest checkpoint served carries.
func (d *Directory) Witnesses() ([]WitnessStatus, int) {
	c := d.cosigner
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]WitnessStatus, len(c.ws))
	for i, w := range c.ws {
		out[i] = WitnessStatus{Name: w.Verifier.Name(), Size: w.size, Outcome: w.outcome}
	}
	n := 0
	if c.cur != nil {
		n = c.cur.valid
	}
	return out, n
}
