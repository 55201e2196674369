-- =====================================================================================================
-- Demo warehouse, part 3 of 3: the six materialized views of the Yango chain (schema `ops`).
--
-- Each view reads the previous one (plus source tables), so the dependency graph PostgreSQL records
-- (pg_depend, through each view's pg_rewrite rule) is exactly this chain, in canonical order:
--
--   1 ops.mv_yango_payments_raw_current            grain payment_id                  <- yango.payments_raw
--   2 ops.mv_yango_payments_ledger_latest          grain payment_id                  <- 1 + yango.ledger_entries
--   3 ops.mv_yango_payments_ledger_latest_enriched grain payment_id                  <- 2 + yango.drivers
--   4 ops.mv_yango_receivable_payable_detail       grain payment_id                  <- 3
--   5 ops.mv_claims_payment_status_cabinet         grain claim_id                    <- 4 + yango.cabinet_claims
--   6 ops.mv_yango_cabinet_claims_for_collection   grain (driver_id, milestone_value) <- 5 + yango.driver_milestones
--                                                                                       + yango.drivers
--
-- Created WITH NO DATA when missing (so their first refresh is a plain one, as in real life) and left
-- alone when present: loading the demo again regenerates the source tables, never these views.
-- Every view has a plain unique index on its grain, ux_<view>_grain, which REFRESH ... CONCURRENTLY
-- needs; the grains are unique by construction (DISTINCT ON, GROUP BY, or a primary key carried over).
--
-- Money: each payment, claim and ledger line is in its park's currency (PEN, COP or CLP); every
-- grain lives in one currency, so the per-grain sums below never mix currencies.
-- =====================================================================================================

CREATE SCHEMA IF NOT EXISTS ops;

-- 1. The current state of each payment: the highest version the raw feed delivered.
CREATE MATERIALIZED VIEW IF NOT EXISTS ops.mv_yango_payments_raw_current AS
SELECT DISTINCT ON (r.payment_id)
       r.payment_id,
       r.version          AS current_version,   -- versions are numbered 1, 2, 3: also how many arrived
       r.driver_id,
       r.milestone_value,
       r.amount,
       r.currency,
       r.status,
       r.received_at
FROM yango.payments_raw AS r
ORDER BY r.payment_id, r.version DESC
WITH NO DATA;

CREATE UNIQUE INDEX IF NOT EXISTS ux_mv_yango_payments_raw_current_grain
    ON ops.mv_yango_payments_raw_current (payment_id);

COMMENT ON MATERIALIZED VIEW ops.mv_yango_payments_raw_current IS
    'Current (latest) version of each payment of the raw feed; grain payment_id';

-- 2. Each current payment with its ledger: totals per entry type, the latest entry, and the state
--    the ledger says the payment is in. A payment with no ledger line yet is kept (NO_LEDGER).
CREATE MATERIALIZED VIEW IF NOT EXISTS ops.mv_yango_payments_ledger_latest AS
WITH ledger AS (
    SELECT l.payment_id,
           count(*)                                                   AS ledger_entries,
           coalesce(sum(l.amount) FILTER (WHERE l.entry_type = 'receivable'), 0) AS receivable_total,
           coalesce(sum(l.amount) FILTER (WHERE l.entry_type = 'settlement'), 0) AS settlement_total,
           coalesce(sum(l.amount) FILTER (WHERE l.entry_type = 'reversal'), 0)   AS reversal_total,
           coalesce(sum(l.amount) FILTER (WHERE l.entry_type = 'payable'), 0)    AS payable_total,
           coalesce(sum(l.amount) FILTER (WHERE l.entry_type = 'payout'), 0)     AS payout_total,
           max(l.booked_at)                                           AS last_booked_at,
           (array_agg(l.entry_type ORDER BY l.booked_at DESC, l.entry_id DESC))[1] AS last_entry_type
    FROM yango.ledger_entries AS l
    GROUP BY l.payment_id
)
SELECT c.payment_id,
       c.driver_id,
       c.milestone_value,
       c.currency,
       c.current_version,
       c.status                              AS payment_status,
       c.amount                              AS payment_amount,
       c.received_at                         AS payment_received_at,
       coalesce(l.ledger_entries, 0)         AS ledger_entries,
       coalesce(l.receivable_total, 0)       AS receivable_total,
       coalesce(l.settlement_total, 0)       AS settlement_total,
       coalesce(l.reversal_total, 0)         AS reversal_total,
       coalesce(l.payable_total, 0)          AS payable_total,
       coalesce(l.payout_total, 0)           AS payout_total,
       l.last_entry_type,
       l.last_booked_at,
       CASE
           WHEN l.payment_id IS NULL THEN 'NO_LEDGER'
           WHEN l.reversal_total <> 0 AND l.settlement_total + l.reversal_total = 0 THEN 'REVERSED'
           WHEN l.settlement_total + l.reversal_total > 0
                AND l.settlement_total + l.reversal_total >= l.receivable_total THEN 'SETTLED'
           WHEN l.settlement_total + l.reversal_total > 0 THEN 'PARTIALLY_SETTLED'
           ELSE 'OPEN'
       END                                   AS ledger_state
FROM ops.mv_yango_payments_raw_current AS c
LEFT JOIN ledger AS l ON l.payment_id = c.payment_id
WITH NO DATA;

CREATE UNIQUE INDEX IF NOT EXISTS ux_mv_yango_payments_ledger_latest_grain
    ON ops.mv_yango_payments_ledger_latest (payment_id);

COMMENT ON MATERIALIZED VIEW ops.mv_yango_payments_ledger_latest IS
    'Each current payment with its latest ledger state and totals per entry type; grain payment_id';

-- 3. The same payments, with who was paid: driver and park.
CREATE MATERIALIZED VIEW IF NOT EXISTS ops.mv_yango_payments_ledger_latest_enriched AS
SELECT ll.payment_id,
       ll.driver_id,
       ll.milestone_value,
       d.full_name       AS driver_name,
       d.status          AS driver_status,
       d.hired_at        AS driver_hired_at,
       d.park_id,
       d.park_name,
       d.city,
       ll.currency,
       ll.current_version,
       ll.payment_status,
       ll.payment_amount,
       ll.payment_received_at,
       ll.ledger_entries,
       ll.receivable_total,
       ll.settlement_total,
       ll.reversal_total,
       ll.payable_total,
       ll.payout_total,
       ll.last_entry_type,
       ll.last_booked_at,
       ll.ledger_state
FROM ops.mv_yango_payments_ledger_latest AS ll
LEFT JOIN yango.drivers AS d ON d.driver_id = ll.driver_id   -- a payment for an unknown driver stays
WITH NO DATA;

CREATE UNIQUE INDEX IF NOT EXISTS ux_mv_yango_payments_ledger_latest_enriched_grain
    ON ops.mv_yango_payments_ledger_latest_enriched (payment_id);

COMMENT ON MATERIALIZED VIEW ops.mv_yango_payments_ledger_latest_enriched IS
    'Current payments with their ledger state, driver and park; grain payment_id';

-- 4. Receivable vs payable, per payment (grain payment_id: one line of the partner's position).
--    Receivable side (Yango owes the partner): receivable booked, cash collected (settlements net of
--    reversals), still to collect. Payable side (the partner owes the driver an 80% share): payable
--    booked, paid out, still to pay out. open_side says which side is still open.
CREATE MATERIALIZED VIEW IF NOT EXISTS ops.mv_yango_receivable_payable_detail AS
SELECT e.payment_id,
       e.driver_id,
       e.milestone_value,
       e.park_id,
       e.park_name,
       e.currency,
       e.payment_status,
       e.payment_amount,
       e.payment_received_at,
       e.receivable_total                            AS receivable_amount,
       m.collected_amount,
       e.receivable_total - m.collected_amount       AS receivable_outstanding,
       e.payable_total                               AS payable_amount,
       e.payout_total                                AS paid_out_amount,
       e.payable_total - e.payout_total              AS payable_outstanding,
       m.collected_amount - e.payout_total           AS net_cash_position,
       CASE
           WHEN e.receivable_total - m.collected_amount > 0 AND e.payable_total - e.payout_total > 0 THEN 'BOTH'
           WHEN e.receivable_total - m.collected_amount > 0 THEN 'RECEIVABLE'
           WHEN e.payable_total - e.payout_total > 0 THEN 'PAYABLE'
           ELSE 'SETTLED'
       END                                           AS open_side,
       e.ledger_state,
       e.last_booked_at
FROM ops.mv_yango_payments_ledger_latest_enriched AS e
CROSS JOIN LATERAL (SELECT e.settlement_total + e.reversal_total AS collected_amount) AS m
WITH NO DATA;

CREATE UNIQUE INDEX IF NOT EXISTS ux_mv_yango_receivable_payable_detail_grain
    ON ops.mv_yango_receivable_payable_detail (payment_id);

COMMENT ON MATERIALIZED VIEW ops.mv_yango_receivable_payable_detail IS
    'Receivable (from Yango) vs payable (to the driver) amounts per payment; grain payment_id';

-- 5. The payment status of every claim filed in the cabinet (grain claim_id: re-filed claims keep
--    their own row; is_latest_claim marks the one that counts). A claim is measured against all the
--    payments of its grain (driver_id, milestone_value):
--      PAID      collected >= claimed        PARTIAL   0 < collected < claimed
--      PENDING   nothing collected, a payment still pending
--      REVERSED  nothing collected, what was paid got reversed
--      UNPAID    no payment at all
CREATE MATERIALIZED VIEW IF NOT EXISTS ops.mv_claims_payment_status_cabinet AS
WITH grain_payments AS (
    SELECT d.driver_id,
           d.milestone_value,
           count(*)                                                              AS payments_count,
           sum(d.collected_amount)                                               AS collected_amount,
           coalesce(sum(d.payment_amount) FILTER (WHERE d.payment_status = 'PENDING'), 0)  AS pending_amount,
           coalesce(sum(d.payment_amount) FILTER (WHERE d.payment_status = 'REVERSED'), 0) AS reversed_amount,
           sum(d.receivable_outstanding)                                         AS receivable_outstanding,
           sum(d.payable_amount)                                                 AS payable_amount,
           sum(d.payable_outstanding)                                            AS payable_outstanding,
           max(d.payment_received_at)                                            AS last_payment_received_at
    FROM ops.mv_yango_receivable_payable_detail AS d
    GROUP BY d.driver_id, d.milestone_value
),
claims AS (
    SELECT c.claim_id,
           c.driver_id,
           c.milestone_value,
           c.filing_seq,
           c.filed_at,
           c.amount,
           c.currency,
           c.cabinet_status,
           count(*) OVER grain                                             AS claim_filings,
           row_number() OVER (grain ORDER BY c.filed_at DESC, c.claim_id DESC) AS recency_rank
    FROM yango.cabinet_claims AS c
    WINDOW grain AS (PARTITION BY c.driver_id, c.milestone_value)
)
SELECT c.claim_id,
       c.driver_id,
       c.milestone_value,
       c.filing_seq,
       c.filed_at,
       c.cabinet_status,
       c.claim_filings,
       c.recency_rank = 1                                    AS is_latest_claim,
       c.currency,
       c.amount                                              AS claim_amount,
       coalesce(p.payments_count, 0)                         AS payments_count,
       coalesce(p.collected_amount, 0)                       AS collected_amount,
       coalesce(p.pending_amount, 0)                         AS pending_amount,
       coalesce(p.reversed_amount, 0)                        AS reversed_amount,
       greatest(c.amount - coalesce(p.collected_amount, 0), 0) AS outstanding_amount,
       coalesce(p.receivable_outstanding, 0)                 AS receivable_outstanding,
       coalesce(p.payable_amount, 0)                         AS payable_amount,
       coalesce(p.payable_outstanding, 0)                    AS payable_outstanding,
       p.last_payment_received_at,
       CASE
           WHEN coalesce(p.collected_amount, 0) >= c.amount THEN 'PAID'
           WHEN coalesce(p.collected_amount, 0) > 0 THEN 'PARTIAL'
           WHEN coalesce(p.pending_amount, 0) > 0 THEN 'PENDING'
           WHEN coalesce(p.reversed_amount, 0) > 0 THEN 'REVERSED'
           ELSE 'UNPAID'
       END                                                   AS payment_status
FROM claims AS c
LEFT JOIN grain_payments AS p
       ON p.driver_id = c.driver_id AND p.milestone_value = c.milestone_value
WITH NO DATA;

CREATE UNIQUE INDEX IF NOT EXISTS ux_mv_claims_payment_status_cabinet_grain
    ON ops.mv_claims_payment_status_cabinet (claim_id);

COMMENT ON MATERIALIZED VIEW ops.mv_claims_payment_status_cabinet IS
    'Payment status (PAID/PARTIAL/PENDING/REVERSED/UNPAID) of every cabinet claim; grain claim_id';

-- 6. CRITICAL: the claims to collect, exactly one row per (driver_id, milestone_value): the latest
--    claim of the grain, whether the milestone was really reached, what was claimed, paid, pending,
--    reversed and is still outstanding, and where the grain stands for collection:
--      CLOSED        paid in full
--      NOT_ELIGIBLE  claimed for a milestone the driver never reached
--      DISPUTED      the cabinet rejected the latest claim
--      IN_PROGRESS   a payment is still pending
--      TO_COLLECT    the rest: unpaid, partially paid or reversed, with an amount outstanding
CREATE MATERIALIZED VIEW IF NOT EXISTS ops.mv_yango_cabinet_claims_for_collection AS
SELECT s.driver_id,
       s.milestone_value,
       s.claim_id,
       s.filed_at                          AS claim_filed_at,
       s.claim_filings,
       s.cabinet_status,
       d.full_name                         AS driver_name,
       d.status                            AS driver_status,
       d.park_id,
       d.park_name,
       d.city,
       m.driver_id IS NOT NULL             AS milestone_reached,
       m.reached_at                        AS milestone_reached_at,
       s.currency,
       s.claim_amount                      AS amount_claimed,
       s.collected_amount                  AS amount_paid,
       s.pending_amount                    AS amount_pending,
       s.reversed_amount                   AS amount_reversed,
       s.outstanding_amount                AS amount_outstanding,
       s.payments_count,
       s.last_payment_received_at          AS last_payment_at,
       s.payment_status,
       CASE
           WHEN s.payment_status = 'PAID' THEN 'CLOSED'
           WHEN m.driver_id IS NULL THEN 'NOT_ELIGIBLE'
           WHEN s.cabinet_status = 'REJECTED' THEN 'DISPUTED'
           WHEN s.pending_amount > 0 THEN 'IN_PROGRESS'
           ELSE 'TO_COLLECT'
       END                                 AS collection_status
FROM ops.mv_claims_payment_status_cabinet AS s
LEFT JOIN yango.drivers AS d
       ON d.driver_id = s.driver_id
LEFT JOIN yango.driver_milestones AS m
       ON m.driver_id = s.driver_id AND m.milestone_value = s.milestone_value
WHERE s.is_latest_claim
WITH NO DATA;

-- The runbook's canonical grain; REFRESH ... CONCURRENTLY needs it.
CREATE UNIQUE INDEX IF NOT EXISTS ux_mv_yango_cabinet_claims_for_collection_grain
    ON ops.mv_yango_cabinet_claims_for_collection (driver_id, milestone_value);

COMMENT ON MATERIALIZED VIEW ops.mv_yango_cabinet_claims_for_collection IS
    'CRITICAL. Yango cabinet claims to collect: latest claim per (driver_id, milestone_value) with amounts '
    'claimed, paid, pending, reversed, outstanding and its collection status';
