// Package labtest adapts package lab to tests: TestMain starts the real
// servers a test package needs once, and each test takes its own users,
// database and component domain from them, so tests can run in parallel.
//
//	func TestMain(m *testing.M) {
//		os.Exit(labtest.Main(m, labtest.Need{Prosody: true, Ejabberd: true}))
//	}
//
//	func TestX(t *testing.T) {
//		t.Parallel()
//		for _, srv := range labtest.Servers(t) {
//			jid, pass := labtest.NewUser(t, srv)
//			comp := labtest.Component(t, srv)
//			...
//		}
//	}
//
// A server that cannot start fails the whole package (exit code 1, with
// the server's log); only -short skips real-server tests.
package labtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clinkme/clinkd/lab"
)

// Need says which servers a test package uses; Main starts only those.
type Need struct {
	Postgres bool
	Prosody  bool
	Ejabberd bool
	Coturn   bool
	// Fast starts the shared XMPP servers without c2s shapers and rate
	// limits (lab.XMPPOptions.Fast), for packages that flood or measure.
	Fast bool
}

// Names of the shared servers' domains.
const (
	Domain    = "lab.localhost"      // user domain of the shared XMPP servers
	TURNRealm = "turn.lab.localhost" // realm of the shared coturn
)

// ComponentPool is how many component domains each shared XMPP server
// accepts. Prosody takes one connection per domain, so this bounds how
// many tests can hold a component connection to one server at once.
const ComponentPool = 16

// leaseTimeout bounds how long Component waits for a free domain before
// failing the test; a wait that long means tests leak leases.
const leaseTimeout = 2 * time.Minute

// environment is what Main started for the package.
type environment struct {
	short   bool
	need    Need
	dir     string
	log     *slog.Logger
	ca      *lab.CA
	pg      *lab.Postgres
	servers []*lab.XMPPServer // in the order of lab.Kinds()
	coturn  *lab.Coturn
	seq     atomic.Uint64 // makes user names unique within the package

	mu     sync.Mutex
	leases map[*lab.XMPPServer]chan lab.Component // free component domains

	// lazy: a fuzz worker starts the servers only when a fuzz target
	// first asks for one, so that fuzzing code that needs none costs
	// nothing per worker.
	lazy     bool
	once     sync.Once
	startErr error
}

// env is set once by Main before any test runs and only read afterwards:
// the accessors take nothing but t, so the package state has to live
// here. It is the only package-level mutable state in lab and labtest
// (the others are parsed templates, regexps and an error value).
var env *environment

// Main starts the servers need asks for (in parallel), runs the tests,
// stops every server and returns the exit code for os.Exit. If a server
// cannot start it prints why, with the server's log, and returns 1
// without running any test. Under -short it starts nothing and the
// accessors skip their test.
func Main(m *testing.M, need Need) int {
	if !flag.Parsed() {
		flag.Parse()
	}
	if testing.Short() {
		env = &environment{short: true, need: need}
		return m.Run()
	}
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelInfo
	}
	e := &environment{
		need:   need,
		log:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
		leases: make(map[*lab.XMPPServer]chan lab.Component),
	}
	lab.ReapOrphans(e.log)
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		e.lazy = true
		env = e
		code := m.Run()
		if err := e.close(); err != nil {
			fmt.Fprintf(os.Stderr, "labtest: %v\n", err)
		}
		return code
	}
	if err := e.start(); err != nil {
		fmt.Fprintf(os.Stderr, "labtest: %v\n", err)
		if cerr := e.close(); cerr != nil {
			fmt.Fprintf(os.Stderr, "labtest: %v\n", cerr)
		}
		return 1
	}
	env = e
	code := m.Run()
	if err := e.close(); err != nil {
		fmt.Fprintf(os.Stderr, "labtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// startTimeout bounds starting everything: ejabberd alone takes 2-4 s on
// an idle machine, but nearly a minute on a 2-core machine shared with
// other heavy jobs.
const startTimeout = 4 * time.Minute

func (e *environment) start() error {
	var err error
	if e.dir, err = os.MkdirTemp("", "clinklab-"); err != nil {
		return err
	}
	if e.ca, err = lab.NewCA(e.dir); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	run := func(f func() error) {
		wg.Go(func() {
			if err := f(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	if e.need.Postgres {
		run(func() (err error) {
			e.pg, err = lab.StartPostgres(ctx, lab.PostgresOptions{Dir: e.dir, Logger: e.log})
			return err
		})
	}
	servers := make([]*lab.XMPPServer, len(lab.Kinds()))
	for i, kind := range lab.Kinds() {
		if kind == lab.Prosody && !e.need.Prosody || kind == lab.Ejabberd && !e.need.Ejabberd {
			continue
		}
		run(func() (err error) {
			servers[i], err = lab.StartXMPP(ctx, lab.XMPPOptions{
				Kind: kind, Dir: e.dir, Domain: Domain, CA: e.ca, Fast: e.need.Fast,
				Components: NewComponents(ComponentPool), Logger: e.log,
			})
			return err
		})
	}
	if e.need.Coturn {
		run(func() (err error) {
			e.coturn, err = lab.StartCoturn(ctx, lab.CoturnOptions{
				Dir: e.dir, Realm: TURNRealm, Secret: randHex(16), CA: e.ca,
				AllowLoopbackPeers: true, Logger: e.log,
			})
			return err
		})
	}
	wg.Wait()
	for _, s := range servers {
		if s != nil {
			e.servers = append(e.servers, s)
			e.addPool(s)
		}
	}
	return errors.Join(errs...)
}

// close stops everything in parallel and removes the temp dir.
func (e *environment) close() error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	closeIt := func(c interface{ Close() error }) {
		wg.Go(func() {
			if err := c.Close(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	for _, s := range e.servers {
		closeIt(s)
	}
	if e.pg != nil {
		closeIt(e.pg)
	}
	if e.coturn != nil {
		closeIt(e.coturn)
	}
	wg.Wait()
	if e.dir != "" {
		if err := os.RemoveAll(e.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (e *environment) addPool(s *lab.XMPPServer) {
	pool := make(chan lab.Component, len(s.Components))
	for _, c := range s.Components {
		pool <- c
	}
	e.mu.Lock()
	e.leases[s] = pool
	e.mu.Unlock()
}

// get returns the environment, skipping t under -short and failing it
// when Main did not run or was not asked for what t needs.
func get(t testing.TB, what string, needed func(Need) bool) *environment {
	t.Helper()
	if testing.Short() {
		t.Skip("labtest: real servers are not started with -short")
	}
	if env == nil {
		t.Fatal("labtest: TestMain must call labtest.Main")
	}
	if env.short {
		t.Skip("labtest: real servers are not started with -short")
	}
	if env.lazy {
		env.once.Do(func() { env.startErr = env.start() })
		if env.startErr != nil {
			t.Fatalf("labtest: %v", env.startErr)
		}
	}
	if needed != nil && !needed(env.need) {
		t.Fatalf("labtest: %s not started: set it in the labtest.Need given to labtest.Main", what)
	}
	return env
}

// Servers returns the shared XMPP servers, Prosody first, for tests that
// run over every kind. Which ones are there follows Need.
func Servers(t testing.TB) []*lab.XMPPServer {
	t.Helper()
	e := get(t, "Prosody or Ejabberd", func(n Need) bool { return n.Prosody || n.Ejabberd })
	return e.servers
}

// Server returns the shared server of kind.
func Server(t testing.TB, kind lab.ServerKind) *lab.XMPPServer {
	t.Helper()
	e := get(t, string(kind), func(n Need) bool {
		return kind == lab.Prosody && n.Prosody || kind == lab.Ejabberd && n.Ejabberd
	})
	for _, s := range e.servers {
		if s.Kind == kind {
			return s
		}
	}
	t.Fatalf("labtest: no shared %s server", kind)
	return nil
}

// CA returns the CA that issued every shared server's certificate.
func CA(t testing.TB) *lab.CA {
	t.Helper()
	return get(t, "", nil).ca
}

// Coturn returns the shared coturn; it allows loopback peers.
func Coturn(t testing.TB) *lab.Coturn {
	t.Helper()
	return get(t, "Coturn", func(n Need) bool { return n.Coturn }).coturn
}

// Postgres returns the shared PostgreSQL server.
func Postgres(t testing.TB) *lab.Postgres {
	t.Helper()
	return get(t, "Postgres", func(n Need) bool { return n.Postgres }).pg
}

// NewDatabase creates a fresh database named after the test and returns
// its URL; it is dropped when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	pg := Postgres(t)
	url, err := pg.CreateDatabase(t.Context(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pg.DropDatabase(ctx, url); err != nil {
			t.Error(err)
		}
	})
	return url
}

// NewUser registers an account with a localpart no other call uses and a
// random password, and returns its bare JID and password.
func NewUser(t testing.TB, srv *lab.XMPPServer) (jid, password string) {
	t.Helper()
	return NewUserAt(t, srv, srv.Domain)
}

// NewUserAt is NewUser on domain, the server's Domain or one of its
// OtherDomains.
func NewUserAt(t testing.TB, srv *lab.XMPPServer, domain string) (jid, password string) {
	t.Helper()
	n := uint64(0)
	if env != nil {
		n = env.seq.Add(1)
	}
	local := fmt.Sprintf("u%d-%s", n, randHex(4))
	password = randHex(16)
	if err := srv.RegisterAt(t.Context(), local, domain, password); err != nil {
		t.Fatal(err)
	}
	return local + "@" + domain, password
}

// NewPostgres starts a private throwaway PostgreSQL cluster for a test
// that freezes, stops or kills its database (never the shared one) or
// needs options (tune, e.g. PasswordAuth), and stops it when the test
// ends.
func NewPostgres(t testing.TB, tune ...func(*lab.PostgresOptions)) *lab.Postgres {
	t.Helper()
	e := get(t, "", nil)
	opts := lab.PostgresOptions{Dir: t.TempDir(), Private: true, Logger: e.log}
	for _, f := range tune {
		f(&opts)
	}
	pg, err := lab.StartPostgres(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Close(); err != nil {
			t.Error(err)
		}
	})
	return pg
}

// Component leases a component domain of srv that no other running test
// holds, and returns it to the pool when the test ends (after the test's
// own cleanups, which run first, have closed its connection). It waits
// while all are leased.
func Component(t testing.TB, srv *lab.XMPPServer) lab.Component {
	t.Helper()
	e := get(t, "", nil)
	e.mu.Lock()
	pool := e.leases[srv]
	e.mu.Unlock()
	if pool == nil {
		t.Fatalf("labtest: %s server at %s was not started by labtest", srv.Kind, srv.C2SAddr)
	}
	timer := time.NewTimer(leaseTimeout)
	defer timer.Stop()
	select {
	case c := <-pool:
		t.Cleanup(func() { pool <- c })
		return c
	case <-t.Context().Done():
		t.Fatal("labtest: test ended while waiting for a component domain")
	case <-timer.C:
		t.Fatalf("labtest: no free component domain on %s after %v: do tests leak leases?", srv.Kind, leaseTimeout)
	}
	return lab.Component{}
}

// NewXMPP starts a private server for a test that stops, restarts or
// kills it. Unset options get defaults: Dir a t.TempDir(), Domain
// "lab.localhost", CA the shared one, four components (lease them with
// Component). The server is closed when the test ends.
func NewXMPP(t testing.TB, opts lab.XMPPOptions) *lab.XMPPServer {
	t.Helper()
	e := get(t, "", nil)
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Domain == "" {
		opts.Domain = Domain
	}
	if opts.CA == nil {
		opts.CA = e.ca
	}
	if opts.Components == nil {
		opts.Components = NewComponents(4)
	}
	if opts.Logger == nil {
		opts.Logger = e.log
	}
	srv, err := lab.StartXMPP(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	e.addPool(srv)
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
		e.mu.Lock()
		delete(e.leases, srv)
		e.mu.Unlock()
	})
	return srv
}

// NewWitness starts a private litewitness (lab.StartWitness) named
// name, with its key in an ssh-agent of its own, and stops both when the
// test ends. Witnesses are per test: every test log has the same origin
// (keydirtest.Origin), and a witness keeps one tree per origin. Register
// the test's log with AddLog.
func NewWitness(t testing.TB, name string) *lab.Witness {
	t.Helper()
	e := get(t, "", nil)
	w, err := lab.StartWitness(t.Context(), lab.WitnessOptions{Dir: t.TempDir(), Name: name, Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Error(err)
		}
	})
	return w
}

// NewComponents returns n components c1.clink.lab.localhost ... cn...,
// each with a random secret.
func NewComponents(n int) []lab.Component {
	cs := make([]lab.Component, n)
	for i := range cs {
		cs[i] = lab.Component{Domain: fmt.Sprintf("c%d.clink.%s", i+1, Domain), Secret: randHex(32)}
	}
	return cs
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b)
}
