package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/labfile"
	"github.com/clinkme/clinkd/doctor"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
)

// TestMain lets tests run this binary's main as a child process: with
// CLINKLAB_TEST_MAIN=1 the test binary is clinklab.
func TestMain(m *testing.M) {
	if os.Getenv("CLINKLAB_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestLabCommand runs clinklab as a user would, as a child process:
// it must come up, write lab.json, let a demo user log in over TLS and
// reach clinkd, and on SIGTERM stop every process it started.
func TestLabCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real servers")
	}
	t.Parallel()
	for _, kind := range lab.Kinds() {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			args := []string{"--server", string(kind), "--dir", dir}
			if kind == lab.Ejabberd {
				// One of the two runs --fast, whose summary must warn.
				args = append(args, "--fast")
			}
			cmd := exec.CommandContext(ctx, os.Args[0], args...)
			cmd.Env = append(os.Environ(), "CLINKLAB_TEST_MAIN=1")
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

			// The summary ends with the "Stop with Ctrl-C" line.
			sc := bufio.NewScanner(stdout)
			var summary strings.Builder
			for sc.Scan() {
				summary.WriteString(sc.Text() + "\n")
				if strings.Contains(sc.Text(), "Stop with Ctrl-C") {
					break
				}
			}
			if !strings.Contains(summary.String(), "ClinkMe lab is up") {
				t.Fatalf("no summary; stdout %q; stderr:\n%s", summary.String(), stderr.String())
			}
			if fast := strings.Contains(summary.String(), "for measurement only"); fast != (kind == lab.Ejabberd) {
				t.Errorf("summary says \"for measurement only\": %v, want %v (--fast only with ejabberd)\n%s", fast, kind == lab.Ejabberd, summary.String())
			}
			go io.Copy(io.Discard, stdout)

			info, err := labfile.Read(filepath.Join(dir, "lab.json"))
			if err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(filepath.Join(dir, "lab.json")); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("lab.json mode = %v, %v; want 0600 (it holds passwords)", fi.Mode().Perm(), err)
			}
			if !info.LoopbackOnly() || len(info.Users) != 2 || info.Server != string(kind) {
				t.Fatalf("lab.json = %+v", info)
			}
			pool, err := client.LoadCertPool(info.CAFile)
			if err != nil {
				t.Fatal(err)
			}
			dev, err := client.Dial(ctx, client.Config{
				Addr: info.C2S, JID: jid.MustParse(info.Users[0].JID), Password: info.Users[0].Password,
				TLS: &tls.Config{RootCAs: pool},
			})
			if err != nil {
				t.Fatalf("alice cannot log in: %v", err)
			}
			if err := dev.Ping(ctx, jid.MustParse(info.Component)); err != nil {
				t.Errorf("ping clinkd: %v", err)
			}
			// lab.json's keys are the key directory's: a v1 device with
			// them, requiring both of the lab's witnesses, proves that bob
			// has no key yet.
			if len(info.Witnesses) != 2 || info.WitnessThreshold != 2 {
				t.Errorf("lab.json witnesses %q, threshold %d; want 2 and 2", info.Witnesses, info.WitnessThreshold)
			}
			kd, err := dev.OpenKeyDirectory(client.KeyDirConfig{Service: jid.MustParse(info.Component), Verifier: info.VerifierKey, VRFKey: info.VRFKey,
				Witnesses: client.WitnessPolicy{Keys: info.Witnesses, Threshold: info.WitnessThreshold}})
			if err != nil {
				t.Fatalf("lab.json's key directory keys: %v", err)
			}
			if res, err := kd.LookupKeys(ctx, info.Users[1].JID); err != nil || res[0].Key != nil || res[0].Version != 0 {
				t.Errorf("v1 lookup of bob in the lab = %+v, %v; want his absence proven", res, err)
			}
			dev.Close()

			// The key directory's log answers over HTTPS with a checkpoint
			// signed by the key lab.json names.
			hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
			resp, err := hc.Get(info.KeyLogURL + "/checkpoint")
			if err != nil {
				t.Fatalf("key log: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			v, err := keylog.ParseVerifier(info.VerifierKey)
			if err != nil {
				t.Fatal(err)
			}
			pol, err := keylog.NewWitnessPolicy(info.Witnesses, info.WitnessThreshold)
			if err != nil {
				t.Fatal(err)
			}
			if _, n, err := pol.Check(body, v); err != nil || n != 2 {
				t.Errorf("key log checkpoint: %d cosignatures, %v; want it to verify with 2\n%s", n, err, body)
			}
			// The doctor finds the lab healthy from lab.json alone, and
			// prints no password.
			dcfg, err := doctor.FromLab(info)
			if err != nil {
				t.Fatal(err)
			}
			var report strings.Builder
			rep := doctor.Run(ctx, dcfg)
			rep.WriteTo(&report)
			if rep.Failed() || !strings.Contains(report.String(), "verdict: all checks passed") || !strings.Contains(report.String(), "valid cosignatures of w1.witness.lab.localhost, w2.witness.lab.localhost (2 required)") {
				t.Errorf("doctor on lab.json failed:\n%s", report.String())
			}
			if strings.Contains(report.String(), info.Users[0].Password) {
				t.Error("the doctor printed the password")
			}

			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("clinklab exit: %v; stderr:\n%s", err, stderr.String())
			}
			for _, p := range lab.Processes() {
				if strings.Contains(p.Cmdline, dir) {
					t.Errorf("left running after clinklab stopped: pid %d %s", p.PID, p.Cmdline)
				}
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"--server", "openfire"}, 2, "want prosody or ejabberd"},
		{[]string{"extra"}, 2, "unexpected argument"},
		{[]string{"--nope"}, 2, "hint: run 'clinklab -h'"},
		{[]string{"init"}, 2, "--dir is required"},
		{[]string{"init", "--nope"}, 2, "hint: run 'clinklab init -h'"},
		// -h is no error; its help says what --fast is for.
		{[]string{"-h"}, 0, "for measurement only, never for a deployment"},
	}
	for _, tt := range tests {
		var stdout, stderr strings.Builder
		code := run(tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stderr.String(), tt.stderr) {
			t.Errorf("clinklab %q = %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), tt.code, tt.stderr)
		}
	}
}
