-- ClinkID accounts, app tokens, entitlements, lock-out state and the names
-- of deleted accounts. See docs/clinkid.md.

CREATE TABLE clinkid_accounts (
	id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	-- PRECIS UsernameCaseMapped form (clinkid.NormalizeName).
	name                text        NOT NULL UNIQUE CHECK (octet_length(name) BETWEEN 1 AND 64),
	-- argon2id in PHC string format: $argon2id$v=19$m=..,t=..,p=..$salt$key
	password_hash       text        NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
	created_at          timestamptz NOT NULL DEFAULT now(),
	password_changed_at timestamptz NOT NULL DEFAULT now()
);

-- App tokens, by the SHA-256 of the token: the token itself is never
-- stored.
CREATE TABLE clinkid_tokens (
	hash       bytea       PRIMARY KEY CHECK (octet_length(hash) = 32),
	account_id bigint      NOT NULL REFERENCES clinkid_accounts (id) ON DELETE CASCADE,
	label      text        NOT NULL DEFAULT '',
	created_at timestamptz NOT NULL DEFAULT now(),
	expires_at timestamptz NOT NULL
);
CREATE INDEX clinkid_tokens_account ON clinkid_tokens (account_id, created_at);
CREATE INDEX clinkid_tokens_expires ON clinkid_tokens (expires_at);

CREATE TABLE clinkid_entitlements (
	account_id bigint      NOT NULL REFERENCES clinkid_accounts (id) ON DELETE CASCADE,
	name       text        NOT NULL,
	granted_at timestamptz NOT NULL DEFAULT now(),
	granted_by text        NOT NULL,
	PRIMARY KEY (account_id, name)
);

-- Failed password attempts by account name, kept whether or not the
-- account exists, so that lock-out behaves the same for both and tells
-- nothing about existence. Shared by clinkd and every `clinkd extauth`
-- process.
CREATE TABLE clinkid_failures (
	name         text        PRIMARY KEY,
	failures     integer     NOT NULL,
	last_failure timestamptz NOT NULL,
	locked_until timestamptz
);
CREATE INDEX clinkid_failures_last ON clinkid_failures (last_failure);

-- Names of deleted accounts, which nobody may register again until the
-- quarantine ends: a new owner would receive what contacts meant for the
-- old one.
CREATE TABLE clinkid_tombstones (
	name       text        PRIMARY KEY,
	deleted_at timestamptz NOT NULL DEFAULT now()
);
