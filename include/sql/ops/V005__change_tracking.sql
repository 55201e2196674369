-- V005: change tracking on the sources, and what each view's last refresh saw (docs/change-tracking.md).
--
-- ops.mv_source_change: insert-only "this relation changed" markers. `mv-refresh track install` puts a
-- statement-level trigger (INSERT, UPDATE, DELETE, TRUNCATE; ENABLE ALWAYS, so rows applied by logical
-- replication are seen too) on each base table a tracked view reads; it writes at most one marker per
-- (table, transaction), in the writer's own transaction: a marker exists exactly when the change commits.
-- No shared counter row (the markers are appended; nothing is updated), nothing that serialises commits.
-- A refresh of a catalog view writes a marker for the view itself, in its own transaction: for the views
-- that read it, that refresh is a change.
--
-- ops.mv_refresh_state: per view, the snapshot its contents reflect (the REFRESH ran in a REPEATABLE READ
-- transaction that first took pg_current_snapshot(), so the REFRESH saw exactly that snapshot), and the
-- basis of a later proof (definitions, triggers, relfilenodes). A marker whose transaction that snapshot
-- does not see is a change the view has not seen: a writer that commits while a refresh runs is never lost.

CREATE TABLE IF NOT EXISTS ops.mv_source_change (
    source_oid oid         NOT NULL,   -- the table (or catalog view) that changed
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- "Changes to these sources that a snapshot does not see": a range on xid from the snapshot's xmin.
CREATE INDEX IF NOT EXISTS mv_source_change_source_xid_idx ON ops.mv_source_change (source_oid, xid);

COMMENT ON TABLE ops.mv_source_change IS
    'Change markers of tracked sources (mv-refresh track): one per (relation, writing transaction). Insert-only.';

-- The trigger function: SECURITY DEFINER (writers need no privilege on ops), search_path pinned.
-- Once per (table, transaction): a transaction-local setting remembers the marker is written, so later
-- statements of the same transaction cost one current_setting() call. A rolled-back savepoint rolls back
-- both the marker and the setting.
CREATE OR REPLACE FUNCTION ops.mv_source_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('mv_refresh.changed_' || TG_RELID::text, true) IS DISTINCT FROM 'y' THEN
        INSERT INTO ops.mv_source_change (source_oid) VALUES (TG_RELID);
        PERFORM set_config('mv_refresh.changed_' || TG_RELID::text, 'y', true);
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION ops.mv_source_changed() IS
    'Statement trigger of mv-refresh change tracking: one marker in ops.mv_source_change per (table, transaction).';

CREATE TABLE IF NOT EXISTS ops.mv_refresh_state (
    schema_name    text        NOT NULL,
    mv_name        text        NOT NULL,
    view_oid       oid         NOT NULL,
    snapshot       pg_snapshot NOT NULL,  -- what the view's contents reflect
    sources        oid[]       NOT NULL,  -- the relations whose markers concern it (tables, partitions, views)
    basis          text        NOT NULL,  -- fingerprint of what must not change for a proof (md5)
    provable       boolean     NOT NULL,  -- could it be proven unchanged, as of that snapshot?
    unprovable_why text,                  -- if not, why
    refresh_log_id bigint,                -- the last real refresh (its ops.mv_refresh_log id)
    rows_after_refresh bigint,
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (schema_name, mv_name)
);

COMMENT ON TABLE ops.mv_refresh_state IS
    'Per view: the snapshot its contents reflect and the basis for proving it unchanged (mv-refresh UNCHANGED).';

-- UNCHANGED: verified current without running REFRESH (status OK; method UNCHANGED).
ALTER TABLE ops.mv_refresh_log DROP CONSTRAINT IF EXISTS mv_refresh_log_method_check;
ALTER TABLE ops.mv_refresh_log ADD CONSTRAINT mv_refresh_log_method_check
    CHECK (method IS NULL OR method IN ('CONCURRENTLY', 'PLAIN', 'UNCHANGED'));

-- By grant only, like the rest of ops (V003).
REVOKE ALL ON TABLE ops.mv_source_change, ops.mv_refresh_state FROM PUBLIC;
REVOKE ALL ON FUNCTION ops.mv_source_changed() FROM PUBLIC;
