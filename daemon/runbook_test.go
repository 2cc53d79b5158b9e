package daemon_test

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestPostgresRunbook runs docs/operators.md's PostgreSQL block as the
// superuser of a PostgreSQL that checks passwords, and then clinkd as
// that role alone, configured as the runbook says (the URL without the
// password, the password in database.password_file): the migrations apply
// and clinkd serves with the key directory, ClinkID and the relay's
// receipts, so the runbook grants exactly enough.
func TestPostgresRunbook(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../docs/operators.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- postgres-setup -->\\s*```sql\\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/operators.md has no <!-- postgres-setup --> SQL block")
	}
	b := make([]byte, 6)
	rand.Read(b)
	suffix := hex.EncodeToString(b)
	role, db, password := "clinkd_rb_"+suffix, "clinkd_rb_"+suffix, "pw-"+suffix
	sql := strings.NewReplacer("ROLE clinkd ", "ROLE "+role+" ", "DATABASE clinkd ", "DATABASE "+db+" ",
		"OWNER clinkd;", "OWNER "+role+";", "'a long random password'", "'"+password+"'").Replace(string(m[1]))
	pg := labtest.NewPostgres(t, func(o *lab.PostgresOptions) { o.PasswordAuth = true })
	admin := pg.AdminURL
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, stmt := range strings.Split(sql, ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("runbook statement %q: %v", strings.TrimSpace(stmt), err)
		}
	}
	passwordFile := filepath.Join(t.TempDir(), "database.password")
	if err := os.WriteFile(passwordFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dbURL := "postgres://" + role + "@" + pg.TCPAddr + "/" + db + "?sslmode=disable"
	// Without the password file the role cannot log in: the server
	// checks passwords, so the run below proves the file is read.
	if c, err := pgx.Connect(ctx, dbURL); err == nil {
		c.Close(ctx)
		t.Fatal("the role logged in without its password: the test proves nothing")
	}

	// The database section as clinkd serve reads it.
	loaded, err := daemon.LoadConfig("", []string{
		"CLINKD_DATABASE_URL=" + dbURL, "CLINKD_DATABASE_PASSWORD_FILE=" + passwordFile, "CLINKD_DATABASE_MIGRATE=true",
		"CLINKD_LINK_ADDR=127.0.0.1:5347", "CLINKD_LINK_DOMAIN=clink.example.org", "CLINKD_LINK_SECRET=" + strings.Repeat("0123456789abcdef", 4),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := labtest.Server(t, lab.Prosody)
	keys := clinkdtest.NewKeyDirKeys(t)
	clinkdtest.Start(t, srv, func(c *daemon.Config) {
		c.Database = loaded.Database
		keys.Configure(c)
		c.ClinkID.Enabled = true
	})
}

// docBlock returns the lines of docs/operators.md's code block that
// follows <!-- marker -->.
func docBlock(t *testing.T, marker string) []string {
	t.Helper()
	doc, err := os.ReadFile("../docs/operators.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- " + marker + " -->\\s*```sh\\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatalf("docs/operators.md has no <!-- %s --> sh block", marker)
	}
	return strings.Split(strings.TrimSpace(string(m[1])), "\n")
}

// TestBackupRestoreRunbook runs docs/operators.md's backup and restore
// blocks against a running clinkd with the key directory, as an operator
// would after losing a database: a dump taken before the last checkpoint
// clinkd signed is refused as rolled back (it would be a second history),
// and the newest dump serves again with every key. The blocks' commands
// run as written, but for what a test cannot be: the superuser is reached
// through PGHOST/PGPORT/PGUSER rather than runuser, the database and its
// owner are the test's, the dump is in a temporary directory, and
// systemctl stop/start stop and start the test's clinkd.
func TestBackupRestoreRunbook(t *testing.T) {
	t.Parallel()
	backup, restore := docBlock(t, "backup"), docBlock(t, "restore")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin, err := url.Parse(labtest.Postgres(t).AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	dbURL := labtest.NewDatabase(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	dbName := strings.TrimPrefix(u.Path, "/")
	env := append(os.Environ(), "PGHOST="+admin.Hostname(), "PGPORT="+cmp.Or(admin.Port(), "5432"), "PGUSER="+admin.User.Username())
	if p, ok := admin.User.Password(); ok {
		env = append(env, "PGPASSWORD="+p)
	}
	if h := admin.Query().Get("host"); h != "" {
		env = append(env, "PGHOST="+h)
	}

	srv := labtest.Server(t, lab.Prosody)
	keys := clinkdtest.NewKeyDirKeys(t)
	cfg := clinkdtest.Config(t, srv)
	cfg.Database = daemon.DatabaseConfig{URL: dbURL, Migrate: true}
	keys.Configure(&cfg)
	var d *daemon.Daemon
	var stop func()
	start := func() { d, stop = clinkdtest.Run(t, cfg, clinkdtest.Logger(t)) }
	start()

	var published []string // bare JIDs with a key
	publish := func(name string) {
		t.Helper()
		user, pass := labtest.NewUser(t, srv)
		dev := clinkdtest.Login(t, srv, user, pass)
		dir, err := dev.OpenKeyDirectory(client.KeyDirConfig{Service: d.Component().Domain(), Verifier: keys.Verifier, VRFKey: keys.VRFKey})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dir.PublishKey(ctx, clinkdtest.Identity(t, name, user).PublicKey()); err != nil {
			t.Fatalf("publish %s: %v", name, err)
		}
		published = append(published, jid.MustParse(user).Bare().String())
	}
	dumps := t.TempDir()
	run := func(block []string, dump string) {
		t.Helper()
		for _, line := range block {
			switch line {
			case "systemctl stop clinkd":
				stop()
				continue
			case "systemctl start clinkd":
				start()
				continue
			}
			args, ok := strings.CutPrefix(line, "runuser -u postgres -- ")
			if !ok {
				t.Fatalf("runbook line %q: not a command the test knows how to run", line)
			}
			argv := strings.Fields(args)
			for i, a := range argv {
				switch {
				case a == "clinkd":
					argv[i] = dbName
				case a == "--dbname=clinkd":
					argv[i] = "--dbname=" + dbName
				case a == "--owner=clinkd":
					argv[i] = "--owner=" + admin.User.Username()
				case strings.HasPrefix(a, "/var/backups/clinkd/"), strings.HasPrefix(a, "--file=/var/backups/clinkd/"):
					argv[i] = strings.Replace(a, "/var/backups/clinkd/clinkd.dump", dump, 1)
				}
			}
			cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
			cmd.Env = env
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("runbook line %q: %v\n%s", line, err, out)
			}
		}
	}
	lookupAll := func() error {
		dev := clinkdtest.NewDevice(t, srv)
		dir, err := dev.OpenKeyDirectory(client.KeyDirConfig{Service: d.Component().Domain(), Verifier: keys.Verifier, VRFKey: keys.VRFKey})
		if err != nil {
			return err
		}
		res, err := dir.LookupKeys(ctx, published...)
		if err != nil {
			return err
		}
		for _, r := range res {
			if r.Key == nil {
				return fmt.Errorf("no key for %s", r.JID)
			}
		}
		return nil
	}

	publish("alice")
	older := filepath.Join(dumps, "older.dump")
	run(backup, older)
	publish("bob") // signed after the older dump
	newest := filepath.Join(dumps, "newest.dump")
	run(backup, newest)

	// The older dump: the log lost bob's entry, which clinkd signed.
	run(restore, older)
	code, body := readyzBody(t, d)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "rolled back") {
		t.Errorf("/readyz after restoring a dump older than the signed checkpoint = %d %s, want 503 naming the rollback", code, body)
	}
	if err := lookupAll(); err == nil {
		t.Error("lookups served from a rolled-back log")
	}
	// The newest: everything signed is there again.
	run(restore, newest)
	if code, body := readyzBody(t, d); code != http.StatusOK {
		t.Errorf("/readyz after restoring the newest dump = %d %s, want 200", code, body)
	}
	if err := lookupAll(); err != nil {
		t.Errorf("lookups after restoring the newest dump: %v", err)
	}
}

func readyzBody(t *testing.T, d *daemon.Daemon) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + d.AdminAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
