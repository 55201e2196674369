"""The demo warehouse: source tables, the deterministic generator and the six views of the Yango chain."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from mv_refresh.db import connect
from mv_refresh.demo import load_demo

# The canonical order (the demo catalog, include/mv_refresh.yaml), written out here rather than imported: the test checks the
# SQL against the contract, not against itself.
CHAIN = (
    "mv_yango_payments_raw_current",
    "mv_yango_payments_ledger_latest",
    "mv_yango_payments_ledger_latest_enriched",
    "mv_yango_receivable_payable_detail",
    "mv_claims_payment_status_cabinet",
    "mv_yango_cabinet_claims_for_collection",
)
CRITICAL = "mv_yango_cabinet_claims_for_collection"

# Each source table and the columns of its primary key (the order the checksums aggregate in).
SOURCE_TABLES = {
    "drivers": ("driver_id",),
    "driver_milestones": ("driver_id", "milestone_value"),
    "cabinet_claims": ("claim_id",),
    "payments_raw": ("payment_id", "version"),
    "ledger_entries": ("entry_id",),
}


def _scalar(conn: psycopg.Connection, query, params=None):
    return conn.execute(query, params).fetchone()[0]


def _counts(conn: psycopg.Connection) -> dict[str, int]:
    return {
        f"yango.{table}": _scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("yango", table)))
        for table in SOURCE_TABLES
    }


def _checksums(dsn: str, *, max_driver: int | None = None) -> dict[str, str]:
    """md5 of every row of every source table, in primary-key order (optionally the first drivers only)."""
    where = sql.SQL("")
    if max_driver is not None:
        where = sql.SQL(" WHERE t.driver_id <= {}").format(sql.Literal(max_driver))
    sums = {}
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for table, key in SOURCE_TABLES.items():
            order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in key)
            query = sql.SQL("SELECT md5(string_agg(t::text, '|' ORDER BY {})) FROM {} AS t{}").format(
                order, sql.Identifier("yango", table), where
            )
            sums[table] = _scalar(conn, query)
    return sums


def _refresh_chain(conn: psycopg.Connection, *, concurrently: bool = False) -> dict[str, int]:
    rows = {}
    for view in CHAIN:
        stmt = "REFRESH MATERIALIZED VIEW CONCURRENTLY {}" if concurrently else "REFRESH MATERIALIZED VIEW {}"
        conn.execute(sql.SQL(stmt).format(sql.Identifier("ops", view)))
        rows[view] = _scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("ops", view)))
    return rows


def _populated(conn: psycopg.Connection) -> dict[str, bool]:
    return dict(conn.execute(
        "SELECT matviewname, ispopulated FROM pg_matviews WHERE schemaname = 'ops' AND matviewname = ANY(%s)",
        (list(CHAIN),),
    ).fetchall())


def test_load_fills_every_source_table(empty_dsn):
    lines: list[str] = []
    counts = load_demo(empty_dsn, drivers=300, progress=lines.append)

    with connect(empty_dsn, autocommit=True) as conn:
        assert counts == _counts(conn)
    assert counts["yango.drivers"] == 300
    # Every table well populated; a milestone grain is claimed more often than not, and paid in
    # several versions, each with several ledger lines.
    assert counts["yango.driver_milestones"] > 600
    assert counts["yango.cabinet_claims"] > 600
    assert counts["yango.payments_raw"] > 1_200
    assert counts["yango.ledger_entries"] > counts["yango.payments_raw"]
    assert 25 * 300 <= sum(counts.values()) <= 40 * 300
    # Short human lines, the data one with the total.
    assert any(line.startswith("sources: ") and f"{sum(counts.values()):,} rows" in line for line in lines)
    assert all(len(line) < 100 for line in lines)


def test_demo_data_is_realistically_messy(demo_dsn):
    with connect(demo_dsn, autocommit=True) as conn:
        def fraction(query: str) -> float:
            return float(_scalar(conn, query))

        # Drivers who reached no milestone at all.
        assert 0.03 < fraction("""
            SELECT avg((NOT EXISTS (SELECT 1 FROM yango.driver_milestones m
                                    WHERE m.driver_id = d.driver_id))::int) FROM yango.drivers d""") < 0.25
        # Re-filed claims: several claims for a minority of grains.
        assert 0.03 < fraction("""
            SELECT avg((n > 1)::int) FROM (SELECT count(*) AS n FROM yango.cabinet_claims
                                           GROUP BY driver_id, milestone_value) g""") < 0.4
        # Most payments arrive in 2 or 3 versions.
        assert fraction("""
            SELECT avg((n BETWEEN 2 AND 3)::int) FROM (SELECT count(*) AS n FROM yango.payments_raw
                                                       GROUP BY payment_id) p""") > 0.5
        statuses = {r[0] for r in conn.execute("SELECT DISTINCT status FROM yango.payments_raw")}
        assert statuses == {"PENDING", "CONFIRMED", "REVERSED"}
        entry_types = {r[0] for r in conn.execute("SELECT DISTINCT entry_type FROM yango.ledger_entries")}
        assert entry_types == {"receivable", "settlement", "reversal", "payable", "payout"}
        # Claims for a milestone never reached, and payments the ledger has not booked yet.
        assert _scalar(conn, """
            SELECT count(*) FROM yango.cabinet_claims c
            WHERE NOT EXISTS (SELECT 1 FROM yango.driver_milestones m
                              WHERE (m.driver_id, m.milestone_value) = (c.driver_id, c.milestone_value))""") > 0
        assert _scalar(conn, """
            SELECT count(DISTINCT r.payment_id) FROM yango.payments_raw r
            WHERE NOT EXISTS (SELECT 1 FROM yango.ledger_entries l WHERE l.payment_id = r.payment_id)""") > 0

        _refresh_chain(conn)
        claim_statuses = {r[0] for r in conn.execute(
            "SELECT DISTINCT payment_status FROM ops.mv_claims_payment_status_cabinet")}
        assert claim_statuses == {"PAID", "PARTIAL", "PENDING", "REVERSED", "UNPAID"}
        collection = {r[0] for r in conn.execute(
            "SELECT DISTINCT collection_status FROM ops.mv_yango_cabinet_claims_for_collection")}
        assert collection == {"CLOSED", "NOT_ELIGIBLE", "DISPUTED", "IN_PROGRESS", "TO_COLLECT"}


def test_generator_is_deterministic(demo_dsn, empty_dsn):
    with connect(demo_dsn, autocommit=True) as conn:
        drivers = _scalar(conn, "SELECT count(*) FROM yango.drivers")
    load_demo(empty_dsn, drivers=drivers)

    reference = _checksums(demo_dsn)
    assert all(reference.values())
    assert _checksums(empty_dsn) == reference

    # A larger warehouse keeps the first drivers exactly as they were.
    load_demo(empty_dsn, drivers=drivers + 100)
    assert _checksums(empty_dsn) != reference
    assert _checksums(empty_dsn, max_driver=drivers) == reference


def test_loading_twice_regenerates_sources_and_keeps_views(empty_dsn):
    first = load_demo(empty_dsn, drivers=40)
    second = load_demo(empty_dsn, drivers=90)
    assert first["yango.drivers"] == 40 and second["yango.drivers"] == 90
    assert all(second[table] > first[table] for table in first)

    with connect(empty_dsn, autocommit=True) as conn:
        assert _populated(conn) == dict.fromkeys(CHAIN, False)
        before = _refresh_chain(conn)
        oids = dict(conn.execute(
            "SELECT relname, oid FROM pg_class WHERE relnamespace = 'ops'::regnamespace AND relkind = 'm'"
        ).fetchall())

    # Same N again: same data; the views stay, populated, until the product refreshes them.
    assert load_demo(empty_dsn, drivers=90) == second
    with connect(empty_dsn, autocommit=True) as conn:
        assert _populated(conn) == dict.fromkeys(CHAIN, True)
        assert dict(conn.execute(
            "SELECT relname, oid FROM pg_class WHERE relnamespace = 'ops'::regnamespace AND relkind = 'm'"
        ).fetchall()) == oids
        assert _refresh_chain(conn, concurrently=True) == before


@pytest.mark.parametrize("drivers", [0, -5])
def test_fewer_than_one_driver_is_refused(empty_dsn, drivers):
    with pytest.raises(ValueError, match=r"drivers must be >= 1"):
        load_demo(empty_dsn, drivers=drivers)
    with connect(empty_dsn, autocommit=True) as conn:
        assert _scalar(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'yango'") == 0


def test_generator_function_refuses_bad_argument_and_keeps_data(demo_dsn):
    with connect(demo_dsn, autocommit=True) as conn:
        before = _counts(conn)
        for bad in (0, None):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="drivers must be a positive integer"):
                conn.execute("SELECT yango.generate_demo_data(%s::integer)", (bad,))
        assert _counts(conn) == before


def test_every_view_refreshes_by_hand_in_canonical_order(demo_dsn):
    with connect(demo_dsn, autocommit=True) as conn:
        # Created WITH NO DATA: the first refresh is a plain one.
        assert _populated(conn) == dict.fromkeys(CHAIN, False)
        plain = _refresh_chain(conn)
        assert all(n > 0 for n in plain.values()), plain
        assert _populated(conn) == dict.fromkeys(CHAIN, True)
        concurrent = _refresh_chain(conn, concurrently=True)
        assert concurrent == plain

        # The grains, as documented: views 1-4 one row per current payment, view 5 one per claim,
        # view 6 one per claimed (driver_id, milestone_value).
        payments = _scalar(conn, "SELECT count(DISTINCT payment_id) FROM yango.payments_raw")
        claims = _scalar(conn, "SELECT count(*) FROM yango.cabinet_claims")
        grains = _scalar(conn, "SELECT count(DISTINCT (driver_id, milestone_value)) FROM yango.cabinet_claims")
        assert [plain[v] for v in CHAIN] == [payments] * 4 + [claims, grains]


def test_critical_view_has_a_unique_grain_and_a_valid_unique_index(demo_dsn):
    with connect(demo_dsn, autocommit=True) as conn:
        _refresh_chain(conn)
        # The runbook's step 1 (Query 2): no duplicates on the grain.
        duplicates = conn.execute("""
            SELECT driver_id, milestone_value, COUNT(*) AS count_duplicates
            FROM ops.mv_yango_cabinet_claims_for_collection
            GROUP BY driver_id, milestone_value
            HAVING COUNT(*) > 1
            ORDER BY count_duplicates DESC
            LIMIT 200""").fetchall()
        assert duplicates == []
        # The runbook's step 3: the index is there.
        assert len(conn.execute("""
            SELECT schemaname, indexname, indexdef FROM pg_indexes
            WHERE schemaname = 'ops'
              AND tablename = 'mv_yango_cabinet_claims_for_collection'
              AND indexname = 'ux_mv_yango_cabinet_claims_for_collection_grain'""").fetchall()) == 1

        # Every view: a valid unique index without WHERE on its grain, named ux_<view>_grain.
        indexes = {
            view: (unique, valid, predicate, columns)
            for view, unique, valid, predicate, columns in conn.execute("""
                SELECT t.relname, x.indisunique, x.indisvalid, x.indpred IS NOT NULL,
                       array_agg(a.attname ORDER BY k.ord)
                FROM pg_index x
                JOIN pg_class i ON i.oid = x.indexrelid
                JOIN pg_class t ON t.oid = x.indrelid
                CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
                JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
                WHERE t.relnamespace = 'ops'::regnamespace AND i.relname = 'ux_' || t.relname || '_grain'
                GROUP BY t.relname, x.indisunique, x.indisvalid, x.indpred""")
        }
        grain = {view: ["payment_id"] for view in CHAIN[:4]}
        grain["mv_claims_payment_status_cabinet"] = ["claim_id"]
        grain[CRITICAL] = ["driver_id", "milestone_value"]
        assert indexes == {view: (True, True, False, grain[view]) for view in CHAIN}

        # The amounts add up.
        assert _scalar(conn, """
            SELECT count(*) FROM ops.mv_yango_cabinet_claims_for_collection
            WHERE amount_outstanding <> greatest(amount_claimed - amount_paid, 0)
               OR (payment_status = 'PAID') <> (collection_status = 'CLOSED')
               OR (collection_status = 'NOT_ELIGIBLE' AND milestone_reached)""") == 0


def test_dependency_graph_is_exactly_the_chain(demo_dsn):
    with connect(demo_dsn, autocommit=True) as conn:
        edges = conn.execute("""
            SELECT DISTINCT v.relname, u.relname, u.relkind
            FROM pg_rewrite r
            JOIN pg_class v ON v.oid = r.ev_class
            JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                            AND d.refclassid = 'pg_class'::regclass
            JOIN pg_class u ON u.oid = d.refobjid
            WHERE v.relnamespace = 'ops'::regnamespace AND v.relkind = 'm' AND u.oid <> v.oid
        """).fetchall()

    upstream_views = {view: set() for view in CHAIN}
    upstream_tables: dict[str, set[str]] = {view: set() for view in CHAIN}
    for view, upstream, kind in edges:
        (upstream_views if kind == "m" else upstream_tables)[view].add(upstream)
    assert upstream_views == {view: ({CHAIN[i - 1]} if i else set()) for i, view in enumerate(CHAIN)}
    assert upstream_tables == {
        "mv_yango_payments_raw_current": {"payments_raw"},
        "mv_yango_payments_ledger_latest": {"ledger_entries"},
        "mv_yango_payments_ledger_latest_enriched": {"drivers"},
        "mv_yango_receivable_payable_detail": set(),
        "mv_claims_payment_status_cabinet": {"cabinet_claims"},
        "mv_yango_cabinet_claims_for_collection": {"drivers", "driver_milestones"},
    }
