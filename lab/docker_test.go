package lab

import (
	"maps"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestDockerConfigsMatchLab keeps the server configs that docker/ ships
// equivalent to the ones the lab generates (and every test runs against):
// every setting must be the same on both sides, except those that only say
// where this deployment keeps its files, which ports and addresses it
// uses, and where its secrets come from. A setting added to one side and
// not the other fails here.
func TestDockerConfigsMatchLab(t *testing.T) {
	t.Parallel()
	cfg := xmppConfig{
		Dir: "/lab-dir", Domain: "lab.localhost", C2SPort: 5222, ComponentPort: 5347,
		Components: []Component{{Domain: "clink.lab.localhost", Secret: "s"}},
		CertFile:   "/c.pem", KeyFile: "/c.key", CAFile: "/ca.pem", DataDir: "/data", LogDir: "/log",
		DistPort: 1, APIPort: 2,
	}
	t.Run("prosody", func(t *testing.T) {
		lab := mustRender(t, "prosody.cfg.lua.tmpl", cfg)
		shipped := mustRead(t, "../docker/prosody/prosody.cfg.lua")
		// Where files live, which ports and interfaces clients use: the
		// deployment's own business.
		skip := []string{"pidfile", "data_path", "log", "interfaces", "c2s_ports", "c2s_interfaces", "component_ports", "certificates", "ssl"}
		compare(t, prosodySettings(t, lab, skip), prosodySettings(t, shipped, skip))
	})
	t.Run("ejabberd", func(t *testing.T) {
		lab := ejabberdSettings(t, mustRender(t, "ejabberd.yml.tmpl", cfg), true)
		shipped := ejabberdSettings(t, mustRead(t, "../docker/ejabberd/ejabberd.yml"), false)
		compare(t, lab, shipped)
	})
	t.Run("coturn", func(t *testing.T) {
		lab := mustRender(t, "turnserver.conf.tmpl", map[string]any{
			"Port": 3478, "TLSPort": 5349, "Realm": "r", "Secret": "s", "CertFile": "/c", "KeyFile": "/k",
			"AllowLoopbackPeers": false, "PIDFile": "/p", "LogFile": "/l", "UserDB": "/u", "UserQuota": CoturnUserQuota,
		})
		skip := []string{"listening-ip", "relay-ip", "listening-port", "tls-listening-port", "realm",
			"static-auth-secret", "userdb", "cert", "pkey", "pidfile", "log-file", "no-stdout-log",
			"min-port", "max-port"}
		for _, shipped := range []string{"../docker/coturn/turnserver.conf", "../packaging/coturn/turnserver.conf"} {
			compare(t, coturnSettings(lab, skip), coturnSettings(mustRead(t, shipped), skip))
		}
	})
}

func mustRender(t *testing.T, name string, data any) string {
	t.Helper()
	b, err := render(name, data)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func compare(t *testing.T, lab, shipped map[string]any) {
	t.Helper()
	for _, k := range slices.Sorted(maps.Keys(lab)) {
		if _, ok := shipped[k]; !ok {
			t.Errorf("%s: set by the lab (%v), missing from docker/", k, lab[k])
		} else if !reflect.DeepEqual(lab[k], shipped[k]) {
			t.Errorf("%s: lab %v, docker/ %v", k, lab[k], shipped[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(shipped)) {
		if _, ok := lab[k]; !ok {
			t.Errorf("%s: set in docker/ (%v), missing from the lab", k, shipped[k])
		}
	}
	if len(lab) < 5 {
		t.Errorf("only %d settings compared; the parser lost the config", len(lab))
	}
}

var luaComment = regexp.MustCompile(`--[^\n]*`)

// prosodySettings reads the global section of a Prosody config (up to the
// first VirtualHost) as key = value statements; a value may be a table
// spanning lines. Whitespace and comments do not count, and the order of
// list entries in modules_enabled does not either.
func prosodySettings(t *testing.T, conf string, skip []string) map[string]any {
	t.Helper()
	conf = luaComment.ReplaceAllString(conf, "")
	global, _, _ := strings.Cut(conf, "\nVirtualHost ")
	out := map[string]any{}
	var key, val string
	depth := 0
	for _, line := range strings.Split(global, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if depth == 0 {
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("prosody: cannot read %q", line)
			}
			key, val = strings.TrimSpace(k), strings.TrimSpace(v)
		} else {
			val += " " + line
		}
		depth += strings.Count(line, "{") - strings.Count(line, "}")
		if depth > 0 {
			continue
		}
		if !slices.Contains(skip, key) {
			out[key] = normalizeLua(key, val)
		}
	}
	return out
}

func normalizeLua(key, val string) any {
	val = strings.Join(strings.Fields(val), " ")
	if key == "modules_enabled" || key == "modules_disabled" {
		var mods []string
		for _, m := range regexp.MustCompile(`"([^"]+)"`).FindAllStringSubmatch(val, -1) {
			mods = append(mods, m[1])
		}
		slices.Sort(mods)
		return mods
	}
	return val
}

// ejabberdSettings reads an ejabberd config and drops what only locates
// the deployment (hosts, certificate paths, ports, listen addresses of the
// client port) and, on the lab side, what only the lab has: the loopback
// HTTP API it registers test accounts through.
func ejabberdSettings(t *testing.T, conf string, lab bool) map[string]any {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(conf), &m); err != nil {
		t.Fatalf("ejabberd: %v", err)
	}
	for _, k := range []string{"hosts", "certfiles", "ca_file", "log_rotate_count", "include_config_file"} {
		delete(m, k)
	}
	var listeners []any
	for _, l := range m["listen"].([]any) {
		l := l.(map[string]any)
		switch l["module"] {
		case "ejabberd_http":
			if lab {
				continue // lab-only registration API
			}
		case "ejabberd_c2s":
			delete(l, "ip")
		case "ejabberd_service":
			// The component secret: a macro from the lab volume in docker/,
			// a literal in the lab.
			l["hosts"] = len(l["hosts"].(map[string]any))
		}
		delete(l, "port")
		listeners = append(listeners, l)
	}
	m["listen"] = listeners
	if lab {
		delete(m["api_permissions"].(map[string]any), "lab registration")
		delete(m["modules"].(map[string]any), "mod_http_api")
	}
	return m
}

// coturnSettings reads coturn's key[=value] lines as a set.
func coturnSettings(conf string, skip []string) map[string]any {
	out := map[string]any{}
	for _, line := range strings.Split(conf, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, _ := strings.Cut(line, "=")
		if slices.Contains(skip, k) {
			continue
		}
		out[line] = true
	}
	return out
}

// TestCoturnConfigHardened checks what the issue asks of the coturn config
// we ship and the lab runs: every setting has a comment saying why right
// above it (coturn reads only whole-line comments), the required settings
// are there, every private, loopback and special-purpose range is denied,
// and only the lab, and only when asked, lets the relay reach 127.0.0.1.
func TestCoturnConfigHardened(t *testing.T) {
	t.Parallel()
	data := func(allow bool) map[string]any {
		return map[string]any{
			"Port": 3478, "TLSPort": 5349, "Realm": "r", "Secret": "s", "CertFile": "/c", "KeyFile": "/k",
			"AllowLoopbackPeers": allow, "PIDFile": "/p", "LogFile": "/l", "UserDB": "/u", "UserQuota": CoturnUserQuota,
		}
	}
	configs := map[string]string{
		"docker/coturn/turnserver.conf":    mustRead(t, "../docker/coturn/turnserver.conf"),
		"packaging/coturn/turnserver.conf": mustRead(t, "../packaging/coturn/turnserver.conf"),
		"lab":                              mustRender(t, "turnserver.conf.tmpl", data(false)),
		"lab+loopback":                     mustRender(t, "turnserver.conf.tmpl", data(true)),
	}
	required := []string{
		"use-auth-secret", "realm", "tls-listening-port", "cert", "pkey", "fingerprint", "no-cli",
		"no-multicast-peers", "user-quota", "total-quota", "no-tlsv1", "no-tlsv1_1", "no-tcp-relay",
		"no-software-attribute", "stale-nonce",
	}
	denied := []string{
		"0.0.0.0-0.255.255.255", "10.0.0.0-10.255.255.255", "100.64.0.0-100.127.255.255",
		"127.0.0.0-127.255.255.255", "169.254.0.0-169.254.255.255", "172.16.0.0-172.31.255.255",
		"192.0.0.0-192.0.0.255", "192.0.2.0-192.0.2.255", "192.88.99.0-192.88.99.255",
		"192.168.0.0-192.168.255.255", "198.18.0.0-198.19.255.255", "198.51.100.0-198.51.100.255",
		"203.0.113.0-203.0.113.255", "240.0.0.0-255.255.255.255",
		"::1", "::ffff:0.0.0.0-::ffff:255.255.255.255", "64:ff9b::-64:ff9b::ffff:ffff",
		"100::-100::ffff:ffff:ffff:ffff", "2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
		"2002::-2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
		"fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
	}
	for name, conf := range configs {
		lines := strings.Split(conf, "\n")
		keys := map[string][]string{}
		for i, line := range lines {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if i == 0 || !strings.HasPrefix(strings.TrimSpace(lines[i-1]), "#") {
				t.Errorf("%s line %d %q: no comment right above it saying why", name, i+1, line)
			}
			k, v, _ := strings.Cut(line, "=")
			keys[k] = append(keys[k], v)
		}
		for _, k := range required {
			if _, ok := keys[k]; !ok {
				t.Errorf("%s: %s missing", name, k)
			}
		}
		for _, r := range denied {
			if !slices.Contains(keys["denied-peer-ip"], r) {
				t.Errorf("%s: denied-peer-ip=%s missing", name, r)
			}
		}
		// coturn (ioa_addr_in_range) matches every address against a
		// range whose start and end are all zeros, and every IPv4 address
		// against an IPv6 range that starts at "::": such a line would
		// refuse every peer (TestRelayRefusesPrivatePeers in turncred
		// caught "denied-peer-ip=::" doing exactly that).
		for _, r := range keys["denied-peer-ip"] {
			lo, _, _ := strings.Cut(r, "-")
			if a, err := netip.ParseAddr(lo); err != nil {
				t.Errorf("%s: denied-peer-ip=%s: %v", name, r, err)
			} else if a.Is6() && a.IsUnspecified() {
				t.Errorf("%s: denied-peer-ip=%s starts at ::, which coturn reads as any address", name, r)
			}
		}
		wantAllowed := []string(nil)
		if name == "lab+loopback" {
			wantAllowed = []string{"127.0.0.1"}
			if _, ok := keys["allow-loopback-peers"]; !ok {
				t.Errorf("%s: allow-loopback-peers missing", name)
			}
		} else if _, ok := keys["allow-loopback-peers"]; ok {
			t.Errorf("%s: allow-loopback-peers set", name)
		}
		if got := keys["allowed-peer-ip"]; !slices.Equal(got, wantAllowed) {
			t.Errorf("%s: allowed-peer-ip = %q, want %q", name, got, wantAllowed)
		}
	}
}
