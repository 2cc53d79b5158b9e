package daemon_test

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestAccountDeletionEndsKeyBinding: deleting a ClinkID account over HTTPS
// ends its key binding with a visible entry in the key log, and an account
// that never published a key can be deleted too.
func TestAccountDeletionEndsKeyBinding(t *testing.T) {
	t.Parallel()
	srv := labtest.Server(t, lab.Prosody)
	keys := clinkdtest.NewKeyDirKeys(t)
	ca := labtest.CA(t)
	cert, key, err := ca.Issue(t.TempDir(), "public", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
		c.Database = daemon.DatabaseConfig{URL: labtest.NewDatabase(t), Migrate: true}
		keys.Configure(c)
		c.Public = daemon.PublicConfig{Listen: "127.0.0.1:0", CertFile: cert, KeyFile: key}
		c.ClinkID.Enabled = true
		c.ClinkID.Registration = "open" // closed by default
		c.ClinkID.Argon2MemoryKiB, c.ClinkID.Argon2Iterations = 8<<10, 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	api, err := client.NewClinkID(d.PublicURL(), &tls.Config{RootCAs: ca.Pool})
	if err != nil {
		t.Fatal(err)
	}

	// The user's device (logged in with the server's own auth under the
	// same name) cannot publish before the ClinkID account exists; once
	// it does, it publishes its key.
	user, pass := labtest.NewUser(t, srv)
	name := strings.Split(user, "@")[0]
	dev := clinkdtest.Login(t, srv, user, pass)
	dir, err := dev.OpenKeyDirectory(client.KeyDirConfig{Service: d.Component().Domain(), Verifier: keys.Verifier, VRFKey: keys.VRFKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dir.PublishKey(ctx, clinkdtest.Identity(t, "alice", user).PublicKey()); err == nil || !strings.Contains(err.Error(), "not an account here") {
		t.Fatalf("publish for a name ClinkID does not know = %v, want refused", err)
	}
	for _, n := range []string{name, name + "-nokey"} {
		if _, err := api.Register(ctx, n, "a long enough password"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dir.PublishKey(ctx, clinkdtest.Identity(t, "alice", user).PublicKey()); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{name, name + "-nokey"} {
		sess, err := api.Login(ctx, n, "a long enough password", "test", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := api.Delete(ctx, sess.Token, "a long enough password"); err != nil {
			t.Fatalf("delete %s: %v", n, err)
		}
	}
	// The device that saw the key reports its end as a change, loudly.
	var kc *client.KeyChangeError
	if _, err := dir.LookupKeys(ctx, jid.MustParse(user).Bare().String()); !errors.As(err, &kc) {
		t.Errorf("lookup by a device that saw the key = %v, want a KeyChangeError", err)
	}
	fresh, err := dev.OpenKeyDirectory(client.KeyDirConfig{Service: d.Component().Domain(), Verifier: keys.Verifier, VRFKey: keys.VRFKey})
	if err != nil {
		t.Fatal(err)
	}
	res, err := fresh.LookupKeys(ctx, jid.MustParse(user).Bare().String())
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Key != nil || !res[0].Ended || res[0].Version != 2 {
		t.Fatalf("after deletion the directory still binds a key: %+v; want the binding proven ended (version 2)", res)
	}
	hist, err := fresh.History(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 2 || hist[0].Kind != "publish" || hist[1].Kind != "delete" {
		t.Errorf("history = %+v, want publish then delete", hist)
	}
	// The session that outlived its account cannot bind a new key (on main
	// before the fix, keydir accepted a publish from a deleted name).
	if _, err := fresh.PublishKey(ctx, clinkdtest.Identity(t, "bob", user).PublicKey()); err == nil || !strings.Contains(err.Error(), "not an account here") {
		t.Errorf("publish from a deleted account's session = %v, want refused", err)
	}
}
