-- Prosody 0.12 configuration shipped with clinkd: the production
-- counterpart of lab/templates/prosody.cfg.lua.tmpl, which `clinkd lab` and
-- the tests run. lab.TestDockerConfigsMatchLab checks that every setting
-- that is not about this deployment's paths, ports and addresses is the
-- same in both; docs/lab.md says why each one is there.

pidfile = "/var/run/prosody/prosody.pid"
-- Accounts, rosters, the MAM archive and offline messages, as Lua text.
data_path = "/var/lib/prosody"
-- info, not debug: debug logs every stanza, and stanzas carry secrets.
log = {
	{ levels = { min = "info" }, to = "console" };
}

interfaces = { "*" }
c2s_ports = { 5222 }
c2s_interfaces = { "*" }
c2s_direct_tls_ports = { }
component_ports = { 5347 }
-- XEP-0114 is not encrypted: only clinkd, in this network namespace, may
-- reach it.
component_interfaces = { "127.0.0.1" }
-- When clinkd re-links after a link died silently, the new connection
-- wins over the dead one (the default, kick_new, refuses clinkd for
-- minutes).
component_conflict_resolve = "kick_old"
-- TCP_NODELAY: with Nagle's algorithm on (Prosody 0.12's default) every
-- message relayed through clinkd waits ~40 ms for a delayed ACK.
network_settings = {
	nagle = false;
}
-- No federation: clinkd never needs s2s.
s2s_ports = { }
modules_disabled = { "s2s"; "s2s_auth_certs"; "dialback" }

-- StartTLS before anything else; never a password in the clear.
c2s_require_encryption = true
allow_unencrypted_plain_auth = false
certificates = "/lab"
ssl = {
	certificate = "/lab/xmpp.pem";
	key = "/lab/xmpp.key";
}

-- SCRAM-SHA-1 hashes, never plain passwords. For ClinkID accounts use
-- authentication = "clinkid" (docs/clinkid.md).
authentication = "internal_hashed"
storage = "internal"

modules_enabled = {
	"roster";     -- contact lists
	"saslauth";   -- SASL login
	"tls";        -- StartTLS
	"disco";      -- service discovery, used to find the clinkd component
	"carbons";    -- XEP-0280: a user's other devices see sent messages
	"mam";        -- XEP-0313 message archive
	"offline";    -- messages for offline users (autoloaded; listed to say so)
	"smacks";     -- XEP-0198 stream management, as mobile clients use
	"blocklist";  -- XEP-0191 blocking
	"ping";       -- XEP-0199
	"posix";      -- pid file and umask
	"limits";     -- c2s rate limit
}

-- XEP-0198: a device whose connection drops resumes its stream within
-- this many seconds, and gets what was sent to it meanwhile, once (the
-- ClinkMe SDK resumes by itself). mod_smacks' default in 0.12.
smacks_hibernation_time = 600

-- clinkd relays timed messages as type="headline" with no-store hints,
-- which mod_mam never archives and mod_offline never stores
-- (docs/expiry.md); ordinary chat keeps the operator's archive policy.
default_archive_policy = true
archive_expires_after = "1w"

limits = {
	c2s = { rate = "10kb/s"; burst = "2s" };
}

VirtualHost "lab.localhost"

Component "clink.lab.localhost"
	-- The secret is read from the lab volume, never written here.
	component_secret = (function()
		local f = assert(io.open("/lab/component.secret"))
		local s = f:read("*l")
		f:close()
		return s
	end)()
