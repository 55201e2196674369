-- least_privilege.sql: let a role that is neither a superuser nor the owner of the materialized views
-- (the role of the Airflow connection: "the refresher") refresh them and write the refresh log, and let
-- a reader read the log and the health views. docs/security.md explains the model.
--
-- Usage (psql 10+, against the database of the ops schema):
--
--   psql -X -d <database> -f include/sql/ops/least_privilege.sql \
--        -v refresher=airflow_mv [-v reader=ops_reader] [-v maintainer=mv_maintainer] [-v tracker=wh_owner]
--        [-v views='ops.mv_a,ops.mv_b'] [-v method=auto]
--
--   refresher  required: the refreshing role. This script creates no role (CREATE ROLE needs CREATEROLE):
--              CREATE ROLE airflow_mv LOGIN PASSWORD '...';  -- never a superuser, never the views' owner
--   reader     optional: a role that may read ops.mv_refresh_log, ops.mv_catalog and the health views.
--   maintainer optional: a role that may also DELETE old rows of the log (`mv-refresh log prune`, run by the
--              ops_mv_health_audit DAG through its own connection). The refresher never gets DELETE.
--   tracker    optional: the role that runs `mv-refresh track install` (the owner of the source tables):
--              EXECUTE on the trigger function ops.mv_source_changed() (docs/change-tracking.md).
--   views      optional: comma-separated schema.name list (quote as in SQL: lab."Weird MV");
--              default: the materialized views listed in ops.mv_catalog (as `mv-refresh init-db` synced
--              them from include/mv_refresh.yaml).
--   method     optional: auto (default): MAINTAIN on PostgreSQL 17+, the function on 15/16;
--              maintain (17+ only); function (also on 17+, e.g. to keep one setup across versions).
--   part       optional: all (default), ops (part 1 only) or views (part 2 only).
--
-- Two parts; each does what the role running the script may do and says what it left for another role.
-- Run it once as each role when the ops tables and the views have different owners.
--
--   Part 1, as the owner of the ops tables (the role that ran `mv-refresh init-db`):
--     refresher: USAGE on schema ops; SELECT, INSERT, UPDATE on ops.mv_refresh_log (the identity column
--                needs no sequence grant); SELECT, INSERT, UPDATE on ops.mv_catalog (every refresh keeps its
--                view's row in step with the catalog file); SELECT on the health views; EXECUTE on
--                ops.mv_health_of (the health views call it with the caller's rights); SELECT, INSERT, DELETE
--                on ops.mv_source_change and SELECT, INSERT, UPDATE on ops.mv_refresh_state (change tracking:
--                what each refresh saw, and the markers its refresh writes and cleans up).
--     reader:    SELECT on the log, ops.mv_catalog and the health views; EXECUTE on ops.mv_health_of.
--     maintainer: the reader's grants plus DELETE on ops.mv_refresh_log.
--   Part 2, as the owner of the views:
--     maintain:  GRANT MAINTAIN, SELECT ON <each view> TO refresher (+ USAGE on the views' schemas).
--     function:  creates, owned by you, the allow-list table ops.mv_refresh_allowlist and the SECURITY
--                DEFINER function ops.refresh_materialized_view(schema, name, concurrently), revokes it
--                from PUBLIC, grants EXECUTE to the refresher, puts the views on the allow-list, and
--                grants SELECT on them (the row count). You need CREATE on schema ops for that (as the
--                owner of ops: GRANT CREATE ON SCHEMA ops TO <views' owner>). Must not be a superuser.
--
-- Idempotent: run it again after adding views. To take a view away: REVOKE MAINTAIN, or
-- DELETE FROM ops.mv_refresh_allowlist WHERE schema_name = '...' AND mv_name = '...'.

\set ON_ERROR_STOP on
\set QUIET on
-- Only PostgreSQL's own functions and operators, whatever this session's search_path holds: a schema
-- on it that another role can write must not be able to substitute a function this script calls.
SET search_path = pg_catalog, pg_temp;
SET client_min_messages = warning;

\if :{?refresher}
\else
    \echo 'least_privilege.sql: name the refreshing role: psql -v refresher=<role> -f include/sql/ops/least_privilege.sql'
    DO $$ BEGIN RAISE EXCEPTION 'psql variable "refresher" is not set (-v refresher=<role>)'; END $$;
\endif
\if :{?reader}
\else
    \set reader ''
\endif
\if :{?maintainer}
\else
    \set maintainer ''
\endif
\if :{?tracker}
\else
    \set tracker ''
\endif
\if :{?views}
\else
    \set views ''
\endif
\if :{?method}
\else
    \set method auto
\endif
\if :{?part}
\else
    \set part all
\endif

-- The variables, as settings the DO blocks below can read (psql does not expand :vars inside $$ bodies).
SET mv_refresh.refresher = :'refresher';
SET mv_refresh.reader = :'reader';
SET mv_refresh.maintainer = :'maintainer';
SET mv_refresh.views = :'views';
SET mv_refresh.method = :'method';
SET mv_refresh.part = :'part';

DO $check$
DECLARE
    refresher text := current_setting('mv_refresh.refresher');
    reader    text := current_setting('mv_refresh.reader');
    maintainer text := current_setting('mv_refresh.maintainer');
    method    text := current_setting('mv_refresh.method');
    part      text := current_setting('mv_refresh.part');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = refresher) THEN
        RAISE EXCEPTION 'role "%" does not exist', refresher
            USING HINT = format('CREATE ROLE %I LOGIN PASSWORD ''...''; (needs CREATEROLE), then run this again', refresher);
    END IF;
    IF reader <> '' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = reader) THEN
        RAISE EXCEPTION 'role "%" does not exist', reader;
    END IF;
    IF maintainer <> '' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = maintainer) THEN
        RAISE EXCEPTION 'role "%" does not exist', maintainer;
    END IF;
    IF maintainer <> '' AND maintainer = refresher THEN
        RAISE EXCEPTION 'the maintainer must not be the refresher "%": the refreshing role must not be able to erase the log it writes', refresher;
    END IF;
    IF refresher = current_user THEN
        RAISE EXCEPTION 'run this as the owner of the ops tables or of the views, not as the refresher "%"', refresher;
    END IF;
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = refresher) THEN
        RAISE WARNING 'role "%" is a superuser: it needs none of this, and should not be one', refresher;
    END IF;
    IF method NOT IN ('auto', 'maintain', 'function') THEN
        RAISE EXCEPTION 'method must be auto, maintain or function, not "%"', method;
    END IF;
    IF part NOT IN ('all', 'ops', 'views') THEN
        RAISE EXCEPTION 'part must be all, ops or views, not "%"', part;
    END IF;
    IF method = 'maintain' AND current_setting('server_version_num')::integer < 170000 THEN
        RAISE EXCEPTION 'PostgreSQL % has no MAINTAIN privilege (17+): use -v method=function (or auto)',
            current_setting('server_version');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'ops' AND c.relname = 'mv_refresh_log') THEN
        RAISE EXCEPTION 'ops.mv_refresh_log does not exist in database "%"', current_database()
            USING HINT = 'run `mv-refresh init-db` first';
    END IF;
END
$check$;

SELECT CASE WHEN :'method' <> 'auto' THEN :'method'
            WHEN current_setting('server_version_num')::integer >= 170000 THEN 'maintain'
            ELSE 'function' END AS chosen_method,
       (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) AS i_am_superuser,
       (SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
          FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
         WHERE n.nspname = 'ops' AND c.relname = 'mv_refresh_log') AS i_own_the_log,
       (SELECT pg_catalog.pg_get_userbyid(c.relowner)
          FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
         WHERE n.nspname = 'ops' AND c.relname = 'mv_refresh_log') AS log_owner
\gset
SELECT :'chosen_method' = 'maintain' AS use_maintain, :'chosen_method' = 'function' AS use_function,
       :'part' IN ('all', 'ops') AS do_ops, :'part' IN ('all', 'views') AS do_views
\gset

-- ================================================================================================
-- Part 1: the ops schema (as the owner of ops.mv_refresh_log)
-- ================================================================================================
\if :do_ops
\if :i_own_the_log
    \echo 'Part 1: grants on the ops schema to' :"refresher"
    SELECT format(statement, :'refresher')
    FROM (VALUES (1, 'GRANT USAGE ON SCHEMA ops TO %I'),
                 (2, 'GRANT SELECT, INSERT, UPDATE ON TABLE ops.mv_refresh_log TO %I'),
                 (3, 'GRANT SELECT, INSERT, UPDATE ON TABLE ops.mv_catalog TO %I'),
                 (4, 'GRANT SELECT ON TABLE ops.v_mv_health, ops.v_yango_cabinet_claims_mv_health TO %I'),
                 (5, 'GRANT EXECUTE ON FUNCTION ops.mv_health_of(text, text, numeric, numeric) TO %I'),
                 (6, 'GRANT SELECT, INSERT, DELETE ON TABLE ops.mv_source_change TO %I'),
                 (7, 'GRANT SELECT, INSERT, UPDATE ON TABLE ops.mv_refresh_state TO %I')
         ) AS grants (step, statement)
    ORDER BY step
    \gexec
    SELECT :'reader' <> '' AS have_reader
    \gset
    \if :have_reader
        \echo 'Part 1: read-only grants on the ops schema to' :"reader"
        SELECT format(statement, :'reader')
        FROM (VALUES (1, 'GRANT USAGE ON SCHEMA ops TO %I'),
                     (2, 'GRANT SELECT ON TABLE ops.mv_refresh_log, ops.mv_catalog, ops.v_mv_health, ops.v_yango_cabinet_claims_mv_health TO %I'),
                     (3, 'GRANT EXECUTE ON FUNCTION ops.mv_health_of(text, text, numeric, numeric) TO %I')
             ) AS grants (step, statement)
        ORDER BY step
        \gexec
    \endif
    SELECT :'tracker' <> '' AS have_tracker
    \gset
    \if :have_tracker
        \echo 'Part 1: change tracking: EXECUTE on the trigger function to' :"tracker"
        SELECT format('GRANT EXECUTE ON FUNCTION ops.mv_source_changed() TO %I', :'tracker')
        \gexec
    \endif
    SELECT :'maintainer' <> '' AS have_maintainer
    \gset
    \if :have_maintainer
        \echo 'Part 1: read and prune grants on the ops schema to' :"maintainer"
        SELECT format(statement, :'maintainer')
        FROM (VALUES (1, 'GRANT USAGE ON SCHEMA ops TO %I'),
                     (2, 'GRANT SELECT, DELETE ON TABLE ops.mv_refresh_log TO %I'),
                     (3, 'GRANT SELECT ON TABLE ops.mv_catalog, ops.v_mv_health, ops.v_yango_cabinet_claims_mv_health TO %I'),
                     (4, 'GRANT EXECUTE ON FUNCTION ops.mv_health_of(text, text, numeric, numeric) TO %I')
             ) AS grants (step, statement)
        ORDER BY step
        \gexec
    \endif
\else
    \echo 'Part 1 skipped: only' :"log_owner" '(the owner of ops.mv_refresh_log) may grant on the ops schema: run this script as that role too.'
\endif
\endif

-- ================================================================================================
-- Part 2: the views (as their owner)
-- ================================================================================================
\if :do_views
CREATE TEMPORARY TABLE mvr_views (
    position    integer NOT NULL,
    schema_name text    NOT NULL,
    mv_name     text    NOT NULL,
    relid       oid,
    relkind     "char",
    owner_name  name,
    owned       boolean NOT NULL DEFAULT false,  -- owned by current_user itself (the function's rule)
    grantable   boolean NOT NULL DEFAULT false   -- current_user has the owner's privileges (may GRANT)
) ON COMMIT PRESERVE ROWS;

DO $views$
DECLARE
    listed text := current_setting('mv_refresh.views');
    item   text;
    parts  text[];
    n      integer := 0;
BEGIN
    IF listed <> '' THEN
        FOREACH item IN ARRAY pg_catalog.regexp_split_to_array(pg_catalog.btrim(listed), '\s*,\s*') LOOP
            parts := pg_catalog.parse_ident(item);
            IF pg_catalog.array_length(parts, 1) <> 2 THEN
                RAISE EXCEPTION 'views: "%" is not schema.name', item;
            END IF;
            n := n + 1;
            INSERT INTO pg_temp.mvr_views (position, schema_name, mv_name) VALUES (n, parts[1], parts[2]);
        END LOOP;
    ELSIF NOT pg_catalog.has_schema_privilege('ops', 'USAGE')
          OR NOT pg_catalog.has_table_privilege('ops.mv_catalog', 'SELECT') THEN
        RAISE EXCEPTION 'role "%" cannot read ops.mv_catalog to find the views', current_user
            USING HINT = 'name them: -v views=''schema.view1,schema.view2'' (or have the owner of ops GRANT USAGE ON SCHEMA ops, SELECT ON ops.mv_catalog to you)';
    ELSE
        INSERT INTO pg_temp.mvr_views (position, schema_name, mv_name)
        SELECT c.position, c.schema_name, c.mv_name FROM ops.mv_catalog AS c;
    END IF;
    UPDATE pg_temp.mvr_views AS v
    SET relid = c.oid, relkind = c.relkind, owner_name = pg_catalog.pg_get_userbyid(c.relowner),
        owned = c.relowner = (SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user),
        grantable = pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
    FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS ns ON ns.oid = c.relnamespace
    WHERE ns.nspname = v.schema_name AND c.relname = v.mv_name;
END
$views$;

-- Which views this run takes care of: GRANT needs the owner's privileges; the function refreshes only
-- views owned by its owner itself.
ALTER TABLE pg_temp.mvr_views ADD COLUMN mine boolean;
UPDATE pg_temp.mvr_views
SET mine = relkind = 'm' AND CASE WHEN :'chosen_method' = 'function' THEN owned ELSE grantable END;

\echo 'Part 2, method' :chosen_method ': views left for another role (none if empty):'
SELECT pg_catalog.format('%I.%I', schema_name, mv_name) AS view,
       CASE WHEN relid IS NULL THEN 'does not exist'
            WHEN relkind <> 'm' THEN 'not a materialized view'
            ELSE pg_catalog.format('owned by %I: run this script as that role', owner_name) END AS skipped
FROM pg_temp.mvr_views
WHERE NOT coalesce(mine, false)
ORDER BY position;

SELECT count(*) FILTER (WHERE mine) > 0 AS have_views,
       count(*) FILTER (WHERE mine) AS view_count
FROM pg_temp.mvr_views
\gset

\if :have_views
    \if :use_function
        \if :i_am_superuser
            DO $$ BEGIN RAISE EXCEPTION
                'refusing to create ops.refresh_materialized_view as a superuser: a SECURITY DEFINER function runs with its owner''s rights'
                USING HINT = 'make a non-superuser role own the views (ALTER MATERIALIZED VIEW ... OWNER TO ...) and run this script as that role, or use PostgreSQL 17+ and MAINTAIN';
            END $$;
        \endif
        DO $$ BEGIN
            IF NOT pg_catalog.has_schema_privilege('ops', 'CREATE') THEN
                RAISE EXCEPTION 'role "%" may not create the function in schema ops', current_user
                    USING HINT = format('as the owner of schema ops: GRANT CREATE ON SCHEMA ops TO %I', current_user);
            END IF;
        END $$;

        \echo 'Part 2: ops.mv_refresh_allowlist and ops.refresh_materialized_view, owned by' :"USER"
        BEGIN;

        CREATE TABLE IF NOT EXISTS ops.mv_refresh_allowlist (
            schema_name text        NOT NULL,
            mv_name     text        NOT NULL,
            added_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
            added_by    text        NOT NULL DEFAULT current_user,
            PRIMARY KEY (schema_name, mv_name)
        );
        COMMENT ON TABLE ops.mv_refresh_allowlist IS
            'The views ops.refresh_materialized_view may refresh (with its owner''s rights). Owned and filled by the views'' owner.';
        DO $$ BEGIN
            IF (SELECT c.relowner <> (SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user)
                  FROM pg_catalog.pg_class AS c WHERE c.oid = 'ops.mv_refresh_allowlist'::pg_catalog.regclass) THEN
                RAISE EXCEPTION 'ops.mv_refresh_allowlist exists and belongs to another role: it decides what the function refreshes, so it must belong to %', current_user;
            END IF;
        END $$;
        REVOKE ALL ON TABLE ops.mv_refresh_allowlist FROM PUBLIC;

        -- Runs with the rights of its owner (the views' owner). Every name it uses is schema-qualified
        -- and search_path is pinned, so no object of the caller's is ever picked up; the caller's text
        -- is compared as data (exact schema and name) and quoted with %I, never parsed as SQL.
        CREATE OR REPLACE FUNCTION ops.refresh_materialized_view(p_schema text, p_name text, p_concurrently boolean)
        RETURNS void
        LANGUAGE plpgsql
        SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $function$
        DECLARE
            v_relkind "char";
            v_owner   oid;
        BEGIN
            IF p_schema IS NULL OR p_name IS NULL OR p_concurrently IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
                    MESSAGE = 'ops.refresh_materialized_view: schema, name and concurrently must not be NULL';
            END IF;
            -- 1. On the owner's allow-list, by exact (schema, name)?
            PERFORM FROM ops.mv_refresh_allowlist AS a WHERE a.schema_name = p_schema AND a.mv_name = p_name;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
                    MESSAGE = format('%I.%I is not on the refresh allow-list of %I (ops.mv_refresh_allowlist)',
                                     p_schema, p_name, current_user),
                    HINT = format('as %I: INSERT INTO ops.mv_refresh_allowlist (schema_name, mv_name) VALUES (%L, %L), or run include/sql/ops/least_privilege.sql',
                                  current_user, p_schema, p_name);
            END IF;
            -- 2. Resolved from the catalogs by name: a materialized view of this function's owner?
            SELECT c.relkind, c.relowner INTO v_relkind, v_owner
            FROM pg_catalog.pg_class AS c
            JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
            WHERE n.nspname = p_schema AND c.relname = p_name;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'undefined_table',
                    MESSAGE = format('materialized view %I.%I does not exist', p_schema, p_name);
            END IF;
            IF v_relkind <> 'm' THEN
                RAISE EXCEPTION USING ERRCODE = 'wrong_object_type',
                    MESSAGE = format('%I.%I is not a materialized view', p_schema, p_name);
            END IF;
            IF v_owner <> (SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
                RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
                    MESSAGE = format('%I.%I belongs to %I, not to %I (the owner of ops.refresh_materialized_view): refused',
                                     p_schema, p_name, pg_get_userbyid(v_owner), current_user);
            END IF;
            -- 3. The refresh, with the names quoted.
            IF p_concurrently THEN
                EXECUTE format('REFRESH MATERIALIZED VIEW CONCURRENTLY %I.%I', p_schema, p_name);
            ELSE
                EXECUTE format('REFRESH MATERIALIZED VIEW %I.%I', p_schema, p_name);
            END IF;
        END
        $function$;

        COMMENT ON FUNCTION ops.refresh_materialized_view(text, text, boolean) IS
            'Refreshes a materialized view of its owner that is on ops.mv_refresh_allowlist, with the owner''s rights (mv-refresh, least_privilege.sql).';
        REVOKE ALL ON FUNCTION ops.refresh_materialized_view(text, text, boolean) FROM PUBLIC;
        SELECT format('GRANT EXECUTE ON FUNCTION ops.refresh_materialized_view(text, text, boolean) TO %I', :'refresher')
        \gexec

        INSERT INTO ops.mv_refresh_allowlist (schema_name, mv_name)
        SELECT schema_name, mv_name FROM pg_temp.mvr_views WHERE mine ORDER BY position
        ON CONFLICT (schema_name, mv_name) DO NOTHING;

        COMMIT;
    \endif

    \if :use_maintain
        \echo 'Part 2: MAINTAIN on' :view_count 'view(s) to' :"refresher"
        SELECT pg_catalog.format('GRANT MAINTAIN ON TABLE %I.%I TO %I', schema_name, mv_name, :'refresher')
        FROM pg_temp.mvr_views WHERE mine ORDER BY position
        \gexec
    \endif

    -- Both ways: SELECT for the row count after a refresh, and USAGE on the views' schemas (needed to
    -- name a view at all) where this role may grant it.
    SELECT pg_catalog.format('GRANT SELECT ON TABLE %I.%I TO %I', schema_name, mv_name, :'refresher')
    FROM pg_temp.mvr_views WHERE mine ORDER BY position
    \gexec
    SELECT pg_catalog.format('GRANT USAGE ON SCHEMA %I TO %I', n.nspname, :'refresher')
    FROM (SELECT DISTINCT schema_name FROM pg_temp.mvr_views WHERE mine) AS v
    JOIN pg_catalog.pg_namespace AS n ON n.nspname = v.schema_name
    WHERE NOT pg_catalog.has_schema_privilege(:'refresher', n.oid, 'USAGE')
      AND pg_catalog.pg_has_role(current_user, n.nspowner, 'USAGE')
    ORDER BY 1
    \gexec
    \echo 'Part 2: schemas whose owner must still GRANT USAGE to' :"refresher" '(none if empty):'
    SELECT n.nspname AS schema, pg_catalog.pg_get_userbyid(n.nspowner) AS owner
    FROM (SELECT DISTINCT schema_name FROM pg_temp.mvr_views WHERE mine) AS v
    JOIN pg_catalog.pg_namespace AS n ON n.nspname = v.schema_name
    WHERE NOT pg_catalog.has_schema_privilege(:'refresher', n.oid, 'USAGE')
    ORDER BY 1;

    -- ================================================================================================
    -- What the refresher may do now
    -- ================================================================================================
    \echo 'Result: what' :"refresher" 'may do on the views handled by this run'
    \if :use_function
        SELECT pg_catalog.format('%I.%I', v.schema_name, v.mv_name) AS view, v.owner_name AS owner,
               pg_catalog.has_table_privilege(:'refresher', v.relid, 'SELECT') AS can_select,
               EXISTS (SELECT 1 FROM ops.mv_refresh_allowlist AS a
                       WHERE a.schema_name = v.schema_name AND a.mv_name = v.mv_name) AS allow_listed,
               pg_catalog.has_function_privilege(:'refresher',
                   'ops.refresh_materialized_view(text, text, boolean)', 'EXECUTE') AS can_execute_function
        FROM pg_temp.mvr_views AS v
        WHERE v.mine
        ORDER BY v.position;
    \else
        SELECT pg_catalog.format('%I.%I', v.schema_name, v.mv_name) AS view, v.owner_name AS owner,
               pg_catalog.has_table_privilege(:'refresher', v.relid, 'SELECT') AS can_select,
               pg_catalog.has_table_privilege(:'refresher', v.relid, 'MAINTAIN') AS has_maintain
        FROM pg_temp.mvr_views AS v
        WHERE v.mine
        ORDER BY v.position;
    \endif
\else
    \echo 'Part 2: no view to take care of as' :"USER"
\endif

DROP TABLE pg_temp.mvr_views;
\endif

RESET mv_refresh.refresher;
RESET mv_refresh.reader;
RESET mv_refresh.maintainer;
RESET mv_refresh.views;
RESET mv_refresh.method;
RESET mv_refresh.part;
