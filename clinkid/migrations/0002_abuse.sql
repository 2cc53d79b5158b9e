-- Limits and account life (issue 13). See docs/clinkid.md, "Lock-out and
-- rate limits" and "Account life".

-- Failed password attempts are counted per name and scope: '' for
-- attempts from networks the account has never logged in from (and from
-- ejabberd, which names no client address), 'net:NETWORK' for one of the
-- account's known networks, 'token:PREFIX' for the re-authentication of a
-- password change or deletion with a live app token. Guessing from
-- strangers delays the first scope only, so it never locks the owner out
-- of the others.
ALTER TABLE clinkid_failures ADD COLUMN scope text NOT NULL DEFAULT '';
ALTER TABLE clinkid_failures DROP CONSTRAINT clinkid_failures_pkey;
ALTER TABLE clinkid_failures ADD PRIMARY KEY (name, scope);

-- Networks (IPv4 /24, IPv6 /64) an account logged in from, with a password
-- or an app token, or registered from. Attempts from them are counted
-- apart from everyone else's.
CREATE TABLE clinkid_known_networks (
	account_id bigint      NOT NULL REFERENCES clinkid_accounts (id) ON DELETE CASCADE,
	network    text        NOT NULL CHECK (octet_length(network) <= 64),
	last_seen  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (account_id, network)
);

-- Failed password attempts from unknown networks, server-wide, per minute:
-- the global failure budget, shared by clinkd and every `clinkd extauth`.
CREATE TABLE clinkid_failure_budget (
	minute   timestamptz PRIMARY KEY,
	failures integer     NOT NULL
);

-- Registration invites (clinkid.registration: invite), by the SHA-256 of
-- the invite: the invite itself is never stored. Each is used once.
CREATE TABLE clinkid_invites (
	hash       bytea       PRIMARY KEY CHECK (octet_length(hash) = 32),
	created_by text        NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	expires_at timestamptz NOT NULL
);
CREATE INDEX clinkid_invites_expires ON clinkid_invites (expires_at);

-- What the XMPP servers must hear about accounts: a registration, a
-- deletion, a password change. Prosody's module reads them through
-- /clinkid/v1/bridge/events; clinkd pushes them to ejabberd's API.
CREATE TABLE clinkid_events (
	seq  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name text        NOT NULL,
	kind text        NOT NULL CHECK (kind IN ('registered', 'deleted', 'password_changed')),
	at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX clinkid_events_at ON clinkid_events (at);

-- How far each consumer that clinkd pushes to (ejabberd) has got.
CREATE TABLE clinkid_event_cursors (
	consumer text   PRIMARY KEY,
	seq      bigint NOT NULL
);
