-- keydir v1: the map that every v1 record commits to (docs/protocol.md,
-- "Key directory v1"; docs/keydir.md, "Tables").

-- genesis: the index of the genesis record, NULL while the log is v0 only
-- (clinkd keys migrate appends it; a new log starts with it). map_root:
-- the map root after the last entry (the head's map line). v1_time: the
-- time of the last v1 record, which the next one may not go below.
ALTER TABLE keydir_tree
	ADD COLUMN genesis  bigint CHECK (genesis >= 0),
	ADD COLUMN map_root bytea  CHECK (length(map_root) = 32),
	ADD COLUMN v1_time  bigint CHECK (v1_time >= 0);

-- v1 records keep their map index in label (publish, reset, delete,
-- migrate); genesis and tick records have none.
ALTER TABLE keydir_entries ALTER COLUMN label DROP NOT NULL;

-- The map's leaves: the current value of each index, tombstones (ended)
-- included; a row is never deleted. changed is the log index of the entry
-- that last changed the row, so a process whose map in memory is behind
-- the log catches up with the rows changed since. The tree above the
-- leaves is computed in memory from these rows (keydir/logdb, Store).
CREATE TABLE keydir_map (
	idx         bytea   PRIMARY KEY CHECK (length(idx) = 32),
	ended       boolean NOT NULL,
	fingerprint bytea   NOT NULL CHECK (length(fingerprint) = 32),
	entry       bigint  NOT NULL REFERENCES keydir_entries (idx),
	version     bigint  NOT NULL CHECK (version >= 1),
	changed     bigint  NOT NULL REFERENCES keydir_entries (idx)
);
CREATE INDEX keydir_map_changed ON keydir_map (changed);

-- Events of v1 entries are the same three kinds; migrate, genesis and
-- tick records have none (they change no binding).
