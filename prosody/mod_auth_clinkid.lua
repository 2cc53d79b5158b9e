-- mod_auth_clinkid: ClinkID accounts for Prosody 0.12.
--
-- An authentication provider that asks clinkd whether a password (or a
-- ClinkID app token) is right, over HTTPS through Prosody's own net.http,
-- asynchronously: a login waits for clinkd without blocking the server.
-- Prosody stores nothing of the account: no password, no hash.
--
-- Install: copy this one file into a directory of plugin_paths, then in the
-- VirtualHost of the ClinkID domain:
--
--   authentication = "clinkid"
--   clinkid_url = "https://clinkd.example.org:8443"  -- clinkd's public listener
--   clinkid_secret_file = "/etc/prosody/clinkid.secret" -- clinkid.bridge_secret
--   clinkid_ca_file = "/etc/prosody/clinkid-ca.pem"   -- optional: the CA of clinkd's certificate
--
-- docs/clinkid.md has the details. Relative paths are relative to the
-- directory of the config file.
--
-- Only SASL PLAIN is offered (clinkd must see the password to check it),
-- and Prosody offers PLAIN only on encrypted streams unless
-- allow_unencrypted_plain_auth is set: keep c2s_require_encryption = true.
--
-- Besides logins the module keeps Prosody in step with clinkd's accounts:
--
-- * Whether a name has an account is only ever answered "yes" when clinkd
--   said so (cached for clinkid_exists_cache_ttl), "no" when it said so
--   (cached for clinkid_missing_cache_ttl) or when nobody can ask. Stanzas
--   that arrive outside a session's thread (from components such as clinkd
--   itself) for a user who is offline and not in the cache wait for
--   clinkd's answer and are then routed again, so a message to a real
--   offline user is kept and one to a name without an account bounces.
-- * Every clinkid_events_interval seconds it asks clinkd for account
--   events: a deleted account's sessions end and what Prosody stored for
--   it goes (as Prosody's own user deletion does), a changed password ends
--   the account's sessions, a new registration clears a cached "no".

local http = require "net.http";
local async = require "util.async";
local json = require "util.json";
local st = require "util.stanza";
local jid_split = require "util.jid".split;
local new_sasl = require "util.sasl".new;
local new_cache = require "util.cache".new;
local storagemanager = require "core.storagemanager";
local url_parse = require "socket.url".parse;

local host = module.host;

local base_url = module:get_option_string("clinkid_url");
local secret_file = module:get_option_path("clinkid_secret_file", nil, "config");
local ca_file = module:get_option_path("clinkid_ca_file", nil, "config");
local timeout = module:get_option_number("clinkid_timeout", 10);
-- A "yes" is kept a minute: deletions arrive as events within
-- clinkid_events_interval anyway, so this bounds only how long a missed
-- event could matter.
local exists_ttl = module:get_option_number("clinkid_exists_cache_ttl", 60);
-- A "no" is kept a minute too; a registration event clears it at once.
local missing_ttl = module:get_option_number("clinkid_missing_cache_ttl", 60);
local events_interval = module:get_option_number("clinkid_events_interval", 5);
-- Stanzas waiting for an answer from clinkd, at most; past it they are
-- routed at once and a name not in the cache is taken as having no account.
local max_pending = module:get_option_number("clinkid_max_pending", 1000);

local function fail(msg)
	module:log("error", "%s", msg);
	error(msg, 0);
end

if not base_url then fail("clinkid_url is required") end
base_url = base_url:gsub("/+$", "");
local parsed = url_parse(base_url);
if not parsed or not parsed.host or (parsed.scheme ~= "https" and parsed.scheme ~= "http") then
	fail("clinkid_url must be an http:// or https:// URL");
end
-- The password crosses this link: plain HTTP only to clinkd on this host.
if parsed.scheme == "http" and not (parsed.host == "localhost" or parsed.host == "::1" or parsed.host:match("^127%.")) then
	fail("clinkid_url must be https:// unless clinkd listens on loopback");
end

local function read_secret()
	if not secret_file then fail("clinkid_secret_file is required") end
	local f, err = io.open(secret_file, "r");
	if not f then fail("clinkid_secret_file: " .. tostring(err)) end
	local s = f:read("*a");
	f:close();
	s = s and s:match("^%s*(.-)%s*$");
	if not s or #s < 32 then fail("clinkid_secret_file: the secret must be at least 32 characters") end
	return s;
end
local secret = read_secret();

-- TLS to clinkd: TLS 1.2 or newer, the chain verified against
-- clinkid_ca_file (or the system's CAs) and the name checked by net.http.
local sslctx = {
	mode = "client";
	protocol = "any";
	options = { "no_sslv2", "no_sslv3", "no_tlsv1", "no_tlsv1_1" };
	verify = { "peer", "fail_if_no_peer_cert" };
	cafile = ca_file;
	capath = not ca_file and "/etc/ssl/certs" or nil;
};

-- request POSTs a JSON body to clinkd and calls back(answer) with the
-- decoded answer, or back(nil, reason). It never waits: callers outside
-- a session's thread use it directly.
local function request(path, payload, back)
	local finished = false;
	local timer;
	local function finish(answer, reason)
		if finished then return end
		finished = true;
		if timer then timer:stop(); end
		back(answer, reason);
	end
	timer = module:add_timer(timeout, function () finish(nil, "timeout") end);
	http.request(base_url .. path, {
		method = "POST";
		body = json.encode(payload);
		headers = {
			["Content-Type"] = "application/json";
			["Authorization"] = "Bearer " .. secret;
		};
		sslctx = sslctx;
		suppress_errors = true;
		suppress_url = true;
	}, function (body, code)
		if code ~= 200 then
			-- body is clinkd's JSON error (never a secret) or net.http's reason.
			return finish(nil, ("clinkd answered %s"):format(tostring(code == 0 and body or code)));
		end
		local answer = json.decode(body or "");
		if type(answer) ~= "table" then
			return finish(nil, "clinkd's answer is not JSON");
		end
		finish(answer);
	end);
end

-- call is request for code in an async context (a session's thread): it
-- waits there for the answer while Prosody serves everyone else.
local function call(path, payload)
	if not async.ready() then
		return nil, "not in an async context";
	end
	local wait, done = async.waiter();
	local answer, reason;
	request(path, payload, function (a, r) answer, reason = a, r; done(); end);
	wait();
	return answer, reason;
end

-- What clinkd said about names: a "yes" or a "no", each until a time.
local exists_cache = new_cache(10000);
local missing_cache = new_cache(10000);

local function remember(username, exists)
	if exists then
		missing_cache:set(username, nil);
		exists_cache:set(username, os.time() + exists_ttl);
	else
		exists_cache:set(username, nil);
		missing_cache:set(username, os.time() + missing_ttl);
	end
end

-- known returns true or false from the caches, nil when unknown.
local function known(username)
	local now = os.time();
	local until_ = exists_cache:get(username);
	if until_ and until_ > now then return true end
	until_ = missing_cache:get(username);
	if until_ and until_ > now then return false end
	return nil;
end

-- current_session is the c2s session whose thread runs this code, if
-- any: Prosody's runners keep their session as runner.data, and the
-- runner is the first local ("self") of the thread's outermost function.
-- test_password is called from such threads outside SASL (XEP-0078
-- non-SASL auth, for one) with no session in its arguments.
local function current_session()
	local thread = coroutine.running();
	if not thread then return nil end
	local ok, session = pcall(function ()
		local level = 1;
		while debug.getinfo(thread, level, "l") do level = level + 1; end
		local name, runner = debug.getlocal(thread, level - 1, 1);
		if name == "self" and type(runner) == "table" and runner.thread == thread and type(runner.data) == "table" then
			return runner.data;
		end
	end);
	if ok and type(session) == "table" and session.ip then return session end
	return nil;
end

local provider = {};

-- test_password is true when password is the account's ClinkID password or
-- one of its live app tokens. ip is the client's address, for clinkd's
-- per-address limits; without one, clinkd counts the check against a
-- budget shared by every check that has none.
local function test_password(username, password, ip)
	local answer, err = call("/clinkid/v1/bridge/check", { name = username, password = password, address = ip });
	if not answer then
		module:log("warn", "ClinkID check for %s failed: %s", username, err);
		return nil, "ClinkID check failed";
	end
	if answer.ok == true then
		remember(username, true);
		return true;
	end
	return nil, "Auth failed. Invalid username or password.";
end

function provider.test_password(username, password)
	local session = current_session();
	return test_password(username, password, session and session.ip);
end

function provider.user_exists(username)
	local k = known(username);
	if k ~= nil then
		if k then return true end
		return nil, "No such ClinkID account";
	end
	if not async.ready() then
		-- Nothing can wait here, and a "yes" we do not know would keep
		-- messages for names with no account. Stanzas that reach this
		-- point waited for clinkd already (see defer below) unless it
		-- failed or too many were waiting.
		return nil, "ClinkID account not known";
	end
	local answer, err = call("/clinkid/v1/bridge/exists", { name = username });
	if not answer then
		module:log("warn", "ClinkID lookup of %s failed: %s", username, err);
		return nil, "ClinkID lookup failed";
	end
	remember(username, answer.exists == true);
	if answer.exists == true then return true end
	return nil, "No such ClinkID account";
end

function provider.get_password()
	return nil, "ClinkID passwords are never revealed";
end

function provider.set_password()
	return nil, "ClinkID passwords are changed over HTTPS";
end

function provider.create_user()
	return nil, "ClinkID accounts are registered over HTTPS";
end

function provider.delete_user()
	return nil, "ClinkID accounts are deleted over HTTPS";
end

function provider.users()
	return function () return nil end;
end

function provider.get_sasl_handler(session)
	local ip = session and session.ip;
	return new_sasl(host, {
		plain_test = function (_, username, password)
			-- The second value true means "the account is usable"; false
			-- would say account-disabled.
			return test_password(username, password, ip), true;
		end;
	});
end

module:provides("auth", provider);

-- Stanzas routed outside a session's thread to an offline user whose
-- account is not in the cache wait here for clinkd's answer, one lookup
-- per name, and are routed again once it is known.
local lookups = {}; -- username -> list of { name = event name, event = event }
local pending = 0;

local function lookup_done(username, ok)
	local waiting = lookups[username];
	lookups[username] = nil;
	if not waiting then return end
	for _, w in ipairs(waiting) do
		pending = pending - 1;
		w.event.clinkid_looked_up = true;
		w.event.clinkid_failed = not ok;
		module:fire_event(w.name, w.event);
	end
end

local function defer(event_name)
	return function (event)
		if async.ready() then return end -- user_exists can ask
		local stanza = event.stanza;
		local username = jid_split(stanza.attr.to);
		if not username then return end
		if event.clinkid_looked_up then
			if event.clinkid_failed and known(username) == nil then
				-- clinkd could not say: not "no such user", try later.
				if stanza.attr.type ~= "error" and stanza.attr.type ~= "result" then
					event.origin.send(st.error_reply(stanza, "wait", "internal-server-error", "The account service did not answer; try again later"));
				end
				return true;
			end
			return;
		end
		if prosody.hosts[host].sessions[username] then return end -- online: it exists
		if known(username) ~= nil then return end
		if pending >= max_pending then
			module:log("warn", "%d stanzas wait for ClinkID lookups; routing %s at once", pending, username);
			return;
		end
		pending = pending + 1;
		local waiting = lookups[username];
		if waiting then
			table.insert(waiting, { name = event_name, event = event });
			return true;
		end
		lookups[username] = { { name = event_name, event = event } };
		request("/clinkid/v1/bridge/exists", { name = username }, function (answer, err)
			if answer then
				remember(username, answer.exists == true);
			else
				module:log("warn", "ClinkID lookup of %s failed: %s", username, err);
			end
			lookup_done(username, answer ~= nil);
		end);
		return true;
	end;
end

for _, name in ipairs({ "message/bare", "message/full", "presence/bare", "presence/full", "iq/bare" }) do
	module:hook(name, defer(name), 1000);
end

-- Account events from clinkd.

local function account_deleted(username)
	exists_cache:set(username, nil);
	missing_cache:set(username, os.time() + missing_ttl);
	module:log("info", "ClinkID account %s@%s was deleted: ending its sessions and removing its data", username, host);
	-- What usermanager.delete_user does after the provider: mod_c2s ends
	-- the sessions (not-authorized, "Account deleted"), mod_roster and
	-- others clean up, then the user's storage goes.
	prosody.events.fire_event("user-deleted", { username = username, host = host });
	local ok, err = pcall(storagemanager.purge, username, host);
	if not ok then
		module:log("error", "Could not remove the data of deleted account %s: %s", username, err);
	end
end

local function password_changed(username)
	module:log("info", "ClinkID account %s@%s changed its password: ending its sessions", username, host);
	-- mod_c2s ends every session of the user (reset, "Password changed").
	prosody.events.fire_event("user-password-changed", { username = username, host = host });
end

-- recheck asks clinkd about every connected user, for when events may
-- have been missed (module loaded while users were connected, or clinkd
-- unreachable for longer than it keeps events).
local function recheck()
	exists_cache:clear();
	missing_cache:clear();
	for username in pairs(prosody.hosts[host].sessions) do
		request("/clinkid/v1/bridge/exists", { name = username }, function (answer)
			if answer and answer.exists == false then
				account_deleted(username);
			elseif answer then
				remember(username, true);
			end
		end);
	end
end

local cursor; -- the last event seen; nil until the first answer
local polling = false;

local function poll()
	if polling then return events_interval end
	polling = true;
	local ok, err = pcall(request, "/clinkid/v1/bridge/events", { after = cursor }, function (answer, err)
		polling = false;
		if not answer then
			module:log("warn", "Could not read ClinkID account events: %s", err);
			return;
		end
		if cursor == nil or answer.gap then
			if answer.gap then
				module:log("warn", "Missed ClinkID account events; checking every connected account");
			end
			recheck();
		end
		for _, ev in ipairs(type(answer.events) == "table" and answer.events or {}) do
			if type(ev) == "table" and type(ev.name) == "string" then
				-- A handler that fails (another module's) must not stop the
				-- events after it, nor the polling.
				local ok, err = pcall(function ()
					if ev.kind == "deleted" then
						account_deleted(ev.name);
					elseif ev.kind == "password_changed" then
						password_changed(ev.name);
					elseif ev.kind == "registered" then
						missing_cache:set(ev.name, nil);
					end
				end);
				if not ok then
					module:log("error", "Handling the ClinkID %s event of %s failed: %s", tostring(ev.kind), ev.name, err);
				end
			end
		end
		if type(answer.last) == "number" then
			cursor = answer.last;
		end
	end);
	if not ok then
		polling = false;
		module:log("error", "Could not ask for ClinkID account events: %s", err);
	end
	-- Returning the interval keeps the timer going, whatever happened.
	return events_interval;
end

module:add_timer(0, poll);
