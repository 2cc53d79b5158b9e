-- keydir: the append-only log of key bindings and the bindings in force.
-- See docs/protocol.md for the leaf record and docs/keydir.md for operators.

-- The log's size: exactly one row. Every append takes this row's lock
-- first (SELECT ... FOR UPDATE), which serializes appenders, and bumps the
-- size in the same transaction that writes the entry and its hashes.
CREATE TABLE keydir_tree (
	id   boolean PRIMARY KEY DEFAULT true CHECK (id),
	size bigint  NOT NULL CHECK (size >= 0)
);
INSERT INTO keydir_tree (id, size) VALUES (true, 0);

-- The leaves: the record text the leaf hash commits to, by index. label
-- repeats the record's label so history needs no scan.
CREATE TABLE keydir_entries (
	idx    bigint PRIMARY KEY CHECK (idx >= 0),
	label  bytea  NOT NULL CHECK (length(label) = 32),
	record bytea  NOT NULL
);
CREATE INDEX keydir_entries_label ON keydir_entries (label, idx);

-- The tree's stored hashes, at golang.org/x/mod/sumdb/tlog's
-- StoredHashIndex positions.
CREATE TABLE keydir_hashes (
	idx  bigint PRIMARY KEY CHECK (idx >= 0),
	hash bytea  NOT NULL CHECK (length(hash) = 32)
);

-- The binding in force for each label: what lookups answer. A reset or a
-- deletion removes the row and appends an entry; the log keeps the past.
CREATE TABLE keydir_bindings (
	label       bytea  PRIMARY KEY CHECK (length(label) = 32),
	jid         text   NOT NULL,
	public_key  bytea  NOT NULL,
	fingerprint bytea  NOT NULL CHECK (length(fingerprint) = 32),
	idx         bigint NOT NULL REFERENCES keydir_entries (idx),
	time        bigint NOT NULL
);

-- Operator-side facts about each entry that the public log leaves out:
-- the JID in the clear and, for resets and deletions, the reason given.
CREATE TABLE keydir_events (
	idx    bigint PRIMARY KEY REFERENCES keydir_entries (idx),
	jid    text   NOT NULL,
	kind   text   NOT NULL CHECK (kind IN ('publish', 'reset', 'delete')),
	reason text   NOT NULL DEFAULT '',
	at     timestamptz NOT NULL DEFAULT now()
);
