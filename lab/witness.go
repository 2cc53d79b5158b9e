package lab

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// TorchwoodVersion is the filippo.io/torchwood release whose litewitness
// and witnessctl the lab runs: scripts/install-deps installs exactly this
// one (v0.10.0 and later need a newer Go than the project's), and
// StartWitness refuses any other build.
const TorchwoodVersion = "v0.6.1"

// WitnessOptions configures StartWitness. Dir and Name are required.
type WitnessOptions struct {
	Dir string // the witness's files go under Dir/witness-<Name>
	// Name is the witness's name (C2SP tlog-cosignature: a schema-less
	// URL), e.g. "witness1.lab.localhost"; its cosignature lines carry it.
	Name   string
	Logger *slog.Logger
}

// A Witness is a running litewitness (filippo.io/torchwood), a real C2SP
// tlog-witness, on loopback. Its Ed25519 key was made by the lab, lives
// only in the memory of an ssh-agent the lab started for it (never in a
// file, a log or a command line), and litewitness signs through that
// agent.
type Witness struct {
	Name string
	// URL is the submission prefix: logs POST URL/add-checkpoint.
	URL string
	// VerifierKey is the witness's cosignature/v1 verifier key
	// (name+hash+base64(0x04 ‖ public key)), which logs' clients trust.
	VerifierKey string
	Dir         string

	log     *slog.Logger
	acct    account
	ctl     string // witnessctl, runnable by acct
	db      string
	sock    string
	addr    string
	logFile string

	mu    sync.Mutex
	agent *process
	proc  *process
}

// witnessNameRE keeps names a file name and a witnessctl argument can
// hold as they are.
var witnessNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]*(/[a-z0-9.-]+)*$`)

// StartWitness starts ssh-agent and litewitness (as the user nobody when
// the lab runs as root) and returns once litewitness answers HTTP. Logs
// are added with AddLog.
func StartWitness(ctx context.Context, opts WitnessOptions) (*Witness, error) {
	w, err := startWitness(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("lab: start witness %s: %w", opts.Name, err)
	}
	return w, nil
}

func startWitness(ctx context.Context, opts WitnessOptions) (*Witness, error) {
	if opts.Dir == "" || !witnessNameRE.MatchString(opts.Name) {
		return nil, errors.New("Dir and a Name of lower-case letters, digits, dots, dashes and slashes are required")
	}
	lw, err := TorchwoodBinary("litewitness")
	if err != nil {
		return nil, err
	}
	ctl, err := TorchwoodBinary("witnessctl")
	if err != nil {
		return nil, err
	}
	agentBin, err := lookPath("ssh-agent")
	if err != nil {
		return nil, fmt.Errorf("ssh-agent (Debian's openssh-client): %w", err)
	}
	acct, err := lookupAccount("nobody")
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Join(opts.Dir, "witness-"+strings.ReplaceAll(opts.Name, "/", "_")))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("%s already exists", dir)
	}
	if err := makeOwnedDir(dir, acct); err != nil {
		return nil, err
	}
	// The binaries sit under the installer's GOPATH (root's home, which
	// nobody cannot enter): nobody runs links (or copies) of them.
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		return nil, err
	}
	for i, src := range []*string{&lw, &ctl} {
		dst := filepath.Join(bin, []string{"litewitness", "witnessctl"}[i])
		if err := linkOrCopy(*src, dst); err != nil {
			return nil, err
		}
		*src = dst
	}
	port, err := portPicker{}.next()
	if err != nil {
		return nil, err
	}
	w := &Witness{
		Name: opts.Name, URL: "http://" + loopback(port), Dir: dir,
		log:  discard(opts.Logger).With("server", "litewitness", "name", opts.Name),
		acct: acct, ctl: ctl, db: filepath.Join(dir, "litewitness.db"),
		sock: filepath.Join(dir, "agent.sock"), addr: loopback(port),
		logFile: filepath.Join(dir, "litewitness.log"),
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	// The agent, in the foreground (-D), holding nothing yet.
	a, err := startProcess(command(acct, baseEnv(dir), agentBin, "-D", "-a", w.sock), filepath.Join(dir, "ssh-agent.log"))
	if err != nil {
		return nil, err
	}
	w.agent = a
	fail := func(err error) (*Witness, error) {
		w.Close()
		return nil, fmt.Errorf("%w\n%s", err, w.LogTail())
	}
	if err := waitReady(ctx, a, func(ctx context.Context) error {
		c, err := (&net.Dialer{}).DialContext(ctx, "unix", w.sock)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return fail(fmt.Errorf("ssh-agent: %w", err))
	}
	// A fresh key, handed to the agent over its socket: it exists in
	// the agent's memory only.
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fail(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return fail(err)
	}
	if err := addToAgent(ctx, w.sock, priv); err != nil {
		return fail(fmt.Errorf("ssh-agent: add the key: %w", err))
	}
	w.VerifierKey = cosignatureVerifierKey(opts.Name, pub)

	// The database with its tables, then the server.
	if _, err := w.witnessctl(ctx, "list-logs"); err != nil {
		return fail(err)
	}
	p, err := startProcess(command(acct, baseEnv(dir), lw,
		"-name", opts.Name, "-key", ssh.FingerprintSHA256(sshPub), "-db", w.db,
		"-ssh-agent", w.sock, "-listen", w.addr), w.logFile)
	if err != nil {
		return fail(err)
	}
	w.mu.Lock()
	w.proc = p
	w.mu.Unlock()
	if err := waitReady(ctx, p, w.probe); err != nil {
		return fail(err)
	}
	w.log.Info("lab: started", "url", w.URL, "dir", dir, "took", time.Since(t0).Round(time.Millisecond))
	return w, nil
}

// TorchwoodBinary finds the litewitness or witnessctl that
// scripts/install-deps installed: in PATH, $GOBIN, each $GOPATH/bin or
// $HOME/go/bin, and refuses one that is not of TorchwoodVersion.
func TorchwoodBinary(name string) (string, error) {
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range filepath.SplitList(os.Getenv("GOPATH")) {
		dirs = append(dirs, filepath.Join(d, "bin"))
	}
	if h, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(h, "go", "bin"))
	}
	path, err := lookPath(name)
	for _, d := range dirs {
		if err == nil {
			break
		}
		p := filepath.Join(d, name)
		if fi, serr := os.Stat(p); serr == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			path, err = p, nil
		}
	}
	if err != nil {
		return "", fmt.Errorf("%s of filippo.io/torchwood %s not found in PATH, $GOBIN, $GOPATH/bin or ~/go/bin (scripts/install-deps installs it)", name, TorchwoodVersion)
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if bi.Main.Path != "filippo.io/torchwood" || bi.Main.Version != TorchwoodVersion {
		return "", fmt.Errorf("%s is %s %s, want filippo.io/torchwood %s (scripts/install-deps installs it)", path, bi.Main.Path, bi.Main.Version, TorchwoodVersion)
	}
	return path, nil
}

func lookPath(name string) (string, error) {
	for _, d := range filepath.SplitList("/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin:" + os.Getenv("PATH")) {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found", name)
}

// linkOrCopy makes dst a hard link of src, or a copy where they are on
// different file systems, mode 0755.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

func addToAgent(ctx context.Context, sock string, priv ed25519.PrivateKey) error {
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	return agent.NewClient(conn).Add(agent.AddedKey{PrivateKey: priv, Comment: "clinklab witness"})
}

// cosignatureVerifierKey is C2SP tlog-cosignature's vkey of an Ed25519
// witness: name+hex(key hash)+base64(0x04 ‖ key), the key hash being the
// first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x04 ‖ key).
func cosignatureVerifierKey(name string, pub ed25519.PublicKey) string {
	typed := append([]byte{0x04}, pub...)
	h := sha256.Sum256(append([]byte(name+"\n"), typed...))
	return fmt.Sprintf("%s+%08x+%s", name, binary.BigEndian.Uint32(h[:4]), base64.StdEncoding.EncodeToString(typed))
}

// probe asks litewitness for its index page.
func (w *Witness) probe(ctx context.Context) error {
	_, err := w.index(ctx)
	return err
}

func (w *Witness) index(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.URL+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s/: %s", w.URL, resp.Status)
	}
	return string(b), nil
}

func (w *Witness) witnessctl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := command(w.acct, baseEnv(w.Dir), w.ctl, append([]string{args[0], "-db", w.db}, args[1:]...)...)
	cmd.Dir = w.Dir
	return runOutput(ctx, cmd)
}

// AddLog registers a log with the witness (witnessctl add-log and
// add-key): its origin and the verifier key its checkpoints are signed
// with. The witness then cosigns that log's checkpoints from size 0 on.
func (w *Witness) AddLog(ctx context.Context, origin, verifierKey string) error {
	if _, err := w.witnessctl(ctx, "add-log", "-origin", origin); err != nil {
		return fmt.Errorf("lab: witness %s: %w", w.Name, err)
	}
	if _, err := w.witnessctl(ctx, "add-key", "-origin", origin, "-key", verifierKey); err != nil {
		return fmt.Errorf("lab: witness %s: %w", w.Name, err)
	}
	return nil
}

var indexLogRE = regexp.MustCompile(`(?m)^- (.+)\n  \(size (\d+), root ([A-Za-z0-9+/=]+)\)`)

// TreeSize returns the size of the largest tree of origin the witness
// has cosigned (0 for a log added but never cosigned), as its index page
// shows it.
func (w *Witness) TreeSize(ctx context.Context, origin string) (int64, error) {
	page, err := w.index(ctx)
	if err != nil {
		return 0, fmt.Errorf("lab: witness %s: %w", w.Name, err)
	}
	for _, m := range indexLogRE.FindAllStringSubmatch(page, -1) {
		if html.UnescapeString(m[1]) == origin {
			return strconv.ParseInt(m[2], 10, 64)
		}
	}
	return 0, fmt.Errorf("lab: witness %s: no log %q", w.Name, origin)
}

// LogTail returns the last lines of litewitness's and ssh-agent's logs.
func (w *Witness) LogTail() string {
	return tailFiles(40, w.logFile, filepath.Join(w.Dir, "ssh-agent.log"))
}

// Close stops litewitness, then the agent (and the key with it). It is
// idempotent.
func (w *Witness) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc == nil && w.agent == nil {
		return nil
	}
	t0 := time.Now()
	for _, p := range []*process{w.proc, w.agent} {
		if p != nil {
			p.stop(syscall.SIGTERM, 10*time.Second)
		}
	}
	w.proc, w.agent = nil, nil
	w.log.Info("lab: stopped", "took", time.Since(t0).Round(time.Millisecond))
	return nil
}
