-- Size leases (docs/keydir.md, "Size leases"). A clinkd that holds a
-- lease answers lookups from the map it keeps in memory, at the size it
-- read when it renewed the lease, without reading the size row: no other
-- writer's change to keydir_tree commits while the lease runs, because
-- every change first closes the lease gate (no lease is granted or renewed
-- until its transaction ends) and then waits until every lease but the
-- writer's own has expired or was given up. The database enforces this
-- for every writer, clinkd or not (the trigger below), so a writer that
-- knows nothing of leases (an older clinkd, an operator's UPDATE) waits
-- too, at most one lease's duration.

-- One row per clinkd that holds or held a lease: instance is a random name
-- the clinkd draws at start, expires the end of its lease by this
-- server's clock. Rows an hour past their end are deleted at renewals.
CREATE TABLE keydir_leases (
	instance text        PRIMARY KEY CHECK (length(instance) BETWEEN 1 AND 64),
	expires  timestamptz NOT NULL
);

-- keydir_lease_gate(me) is called by a writer's transaction before it
-- changes keydir_tree: it takes the size row, then the gate (the advisory
-- lock that renewals take shared), names the writer's own lease (me; NULL
-- or '' for none) for the trigger, and returns once no other lease runs.
-- The locks are taken in that order by every writer (the size row, the
-- gate), and renewals take the gate alone, so no two wait for each other
-- in a cycle.
CREATE FUNCTION keydir_lease_gate(me text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	until timestamptz;
BEGIN
	-- A writer must see every lease granted before the gate closed, so
	-- each statement here needs a fresh snapshot.
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'keydir: keydir_tree is changed under READ COMMITTED only (the size leases are read after the gate closes)';
	END IF;
	PERFORM 1 FROM keydir_tree FOR UPDATE;
	PERFORM pg_advisory_xact_lock(4849316512938262135);
	PERFORM set_config('clinkd.keydir_lease', coalesce(me, ''), true);
	LOOP
		SELECT max(l.expires) INTO until FROM keydir_leases l WHERE l.instance <> coalesce(me, '');
		EXIT WHEN until IS NULL OR until <= clock_timestamp();
		PERFORM pg_sleep(least(extract(epoch FROM until - clock_timestamp()), 0.005)::float8);
	END LOOP;
END $$;

-- Every change to the size row passes the gate, whoever makes it. A
-- clinkd's own append has passed it already (keydir_lease_gate set
-- clinkd.keydir_lease), so this returns at once for it.
CREATE FUNCTION keydir_tree_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM keydir_lease_gate(nullif(current_setting('clinkd.keydir_lease', true), ''));
	RETURN NULL;
END $$;

CREATE TRIGGER keydir_tree_gate AFTER UPDATE ON keydir_tree
	FOR EACH ROW EXECUTE FUNCTION keydir_tree_gate();

-- keydir_renew_lease(me, ttl_ms) grants or renews me's lease for ttl_ms
-- from now and returns the size row as it is under the gate: any change
-- that committed before is in it, and none can commit until the lease
-- ends (or me gives it up).
CREATE FUNCTION keydir_renew_lease(me text, ttl_ms integer,
	OUT size bigint, OUT genesis bigint, OUT map_root bytea, OUT v1_time bigint)
LANGUAGE plpgsql AS $$
BEGIN
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'keydir: leases are renewed under READ COMMITTED only';
	END IF;
	IF ttl_ms < 1 OR ttl_ms > 60000 THEN
		RAISE EXCEPTION 'keydir: a lease runs 1 ms to 60 s, not % ms', ttl_ms;
	END IF;
	PERFORM pg_advisory_xact_lock_shared(4849316512938262135);
	SELECT t.size, t.genesis, t.map_root, t.v1_time INTO size, genesis, map_root, v1_time FROM keydir_tree t;
	INSERT INTO keydir_leases AS l (instance, expires) VALUES (me, clock_timestamp() + ttl_ms * interval '1 millisecond')
		ON CONFLICT (instance) DO UPDATE SET expires = excluded.expires;
	DELETE FROM keydir_leases l WHERE l.expires < clock_timestamp() - interval '1 hour';
END $$;
