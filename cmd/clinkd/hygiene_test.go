package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// memoryHit is one place in a process's memory where a needle was found.
type memoryHit struct {
	mapping string // the line of /proc/PID/maps
	addr    uint64
	context []byte // bytes around the hit, to tell what holds it
}

// scanMemory reads every readable mapping of process pid through
// /proc/PID/mem, as an attacker with a core dump (or ptrace) would see
// it, and returns where each needle occurs. Reading another process's
// memory needs ptrace rights over it: the tests run as root.
func scanMemory(t *testing.T, pid int, needles ...[]byte) []memoryHit {
	t.Helper()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	var hits []memoryHit
	longest := 0
	for _, n := range needles {
		longest = max(longest, len(n))
	}
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) < 2 || f[1][0] != 'r' || strings.HasSuffix(line, "[vvar]") || strings.HasSuffix(line, "[vsyscall]") {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		// Read in chunks that overlap by the longest needle, so that a
		// needle across a chunk boundary is found.
		const chunk = 1 << 20
		buf := make([]byte, chunk+longest)
		for off := start; off < end; off += chunk {
			n := min(uint64(len(buf)), end-off)
			got, err := mem.ReadAt(buf[:n], int64(off))
			if err != nil && got == 0 {
				break // unreadable (guard pages and the like)
			}
			data := buf[:got]
			for _, needle := range needles {
				for i := 0; ; {
					j := bytes.Index(data[i:], needle)
					if j < 0 {
						break
					}
					at := i + j
					lo, hi := max(0, at-96), min(len(data), at+len(needle)+96)
					hits = append(hits, memoryHit{mapping: line, addr: off + uint64(at), context: append([]byte(nil), data[lo:hi]...)})
					i = at + 1
				}
			}
		}
	}
	return hits
}

// TestExpiredMessageLeavesNoTrace plays an attacker who gets clinkd's
// memory (a core dump, a swapped page, ptrace) after a timed message
// expired: `clinkd serve` runs as a child process against each real
// server, relays a timed message to an online device and holds it until
// it expires, on a link that carries nothing after it; then every
// readable page of the process is read through /proc/PID/mem and neither
// a stretch of the message's ciphertext nor of its signature may be found
// anywhere. (On the code before memory hygiene the scan found 84 copies.
// Until the link read with its own reader, which zeroes what it has read,
// the test had a later message cross the link to push this one out of
// encoding/xml's buffer; on a quiet link that buffer kept it: four hits.)
func TestExpiredMessageLeavesNoTrace(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) { testExpiredMessageLeavesNoTrace(t, srv) })
	}
}

func testExpiredMessageLeavesNoTrace(t *testing.T, srv *lab.XMPPServer) {
	t.Parallel()
	comp := labtest.Component(t, srv)
	dir := t.TempDir()
	config := writeServeConfig(t, dir, srv, comp, "", "")
	c := startServe(t, config)
	c.line(t, regexp.MustCompile(`msg="xmpp link up"`))

	ctx := ctxFor(t, 2*time.Minute)
	domain := jid.MustParse(comp.Domain)
	aj, ap := labtest.NewUser(t, srv)
	bj, bp := labtest.NewUser(t, srv)
	a := clinkdtest.Login(t, srv, aj, ap)
	b := clinkdtest.Login(t, srv, bj, bp)
	announce(t, b, domain, bj)
	alice, bob := clinkdtest.Identity(t, "alice", aj), clinkdtest.Identity(t, "bob", bj)
	now := time.Now().UTC().Truncate(time.Second)
	env, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: bj, Key: bob.PublicKey()}},
		envelope.Header{ID: "gone-" + strconv.FormatInt(now.UnixNano(), 36), Time: now, Expires: now.Add(10 * time.Second)},
		envelope.Content{Kind: envelope.KindText, Text: "to be wiped"})
	if err != nil {
		t.Fatal(err)
	}
	// Stretches of the base64 text the envelope travels as: 48
	// characters of random ciphertext or signature cannot occur by chance.
	payload := base64.StdEncoding.EncodeToString(env.Payload)
	sig := base64.StdEncoding.EncodeToString(env.Signature)
	needles := [][]byte{[]byte(payload[8:56]), []byte(sig[len(sig)/2 : len(sig)/2+48])}

	if err := a.SendEnvelope(ctx, domain, jid.MustParse(bj), env); err != nil {
		t.Fatal(err)
	}
	next(t, b, "the timed message", envelopeWithID(env.ID))
	// Nothing crosses the link after it: a quiet link must not keep it
	// in its read buffer (component/xmlread.go).
	// While the message is held, the scan finds it: the check can fail.
	if hits := scanMemory(t, c.cmd.Process.Pid, needles...); len(hits) == 0 {
		t.Fatal("the held message is not found in clinkd's memory: the scan proves nothing")
	}

	next(t, b, "the first message's expiry", expired(env.ID))
	// The relay overwrites what the process freed after the expiry sweep
	// (at most every 30 s; this is the first).
	c.line(t, regexp.MustCompile(`msg="expiry: freed memory overwritten"`))
	for _, h := range scanMemory(t, c.cmd.Process.Pid, needles...) {
		t.Errorf("after expiry, clinkd's memory still holds the message at %#x in %s:\n%q", h.addr, h.mapping, h.context)
	}
}
