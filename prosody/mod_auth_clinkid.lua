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

local http = require "net.http";
local async = require "util.async";
local json = require "util.json";
local new_sasl = require "util.sasl".new;
local new_cache = require "util.cache".new;
local url_parse = require "socket.url".parse;

local host = module.host;

local base_url = module:get_option_string("clinkid_url");
local secret_file = module:get_option_path("clinkid_secret_file", nil, "config");
local ca_file = module:get_option_path("clinkid_ca_file", nil, "config");
local timeout = module:get_option_number("clinkid_timeout", 10);
local exists_ttl = module:get_option_number("clinkid_exists_cache_ttl", 600);

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

-- call POSTs a JSON body to clinkd and returns the decoded answer, or nil
-- and a reason. It must run in an async context (a session's thread): it
-- waits for the answer there, and Prosody serves everyone else meanwhile.
local function call(path, payload)
	if not async.ready() then
		return nil, "not in an async context";
	end
	local wait, done = async.waiter();
	local finished, body, code = false, nil, nil;
	local function finish(b, c)
		if finished then return end
		finished, body, code = true, b, c;
		done();
	end
	local timer = module:add_timer(timeout, function () finish(nil, "timeout") end);
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
	}, function (b, c) finish(b, c) end);
	wait();
	timer:stop();
	if code ~= 200 then
		-- body is clinkd's JSON error (never a secret) or net.http's reason.
		return nil, ("clinkd answered %s"):format(tostring(code == 0 and body or code));
	end
	local answer = json.decode(body or "");
	if type(answer) ~= "table" then
		return nil, "clinkd's answer is not JSON";
	end
	return answer;
end

-- Names known to exist, so that user_exists can answer where it cannot wait
-- (see below).
local known = new_cache(10000);

local provider = {};

-- test_password is true when password is the account's ClinkID password or
-- one of its live app tokens. ip is the client's address, for clinkd's
-- per-address limit.
local function test_password(username, password, ip)
	local answer, err = call("/clinkid/v1/bridge/check", { name = username, password = password, address = ip });
	if not answer then
		module:log("warn", "ClinkID check for %s failed: %s", username, err);
		return nil, "ClinkID check failed";
	end
	if answer.ok == true then
		known:set(username, os.time() + exists_ttl);
		return true;
	end
	return nil, "Auth failed. Invalid username or password.";
end

function provider.test_password(username, password)
	return test_password(username, password, nil);
end

function provider.user_exists(username)
	local until_ = known:get(username);
	if until_ and until_ > os.time() then
		return true;
	end
	if not async.ready() then
		-- Outside a session's thread (stanzas from components such as
		-- clinkd itself, timers) nothing can wait for clinkd. Saying "no"
		-- would bounce messages to real users who are offline, so the
		-- answer is yes: at worst an offline message is kept for a name
		-- with no account.
		return true;
	end
	local answer, err = call("/clinkid/v1/bridge/exists", { name = username });
	if not answer then
		module:log("warn", "ClinkID lookup of %s failed: %s", username, err);
		return nil, "ClinkID lookup failed";
	end
	if answer.exists == true then
		known:set(username, os.time() + exists_ttl);
		return true;
	end
	known:set(username, nil);
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
