-- =====================================================================================================
-- Demo warehouse, part 2 of 3: the data generator.
--
--   SELECT yango.generate_demo_data(20000);   -- N drivers; about 27 source rows per driver
--
-- Empties the yango source tables (01_sources.sql) and fills them again, set-based (INSERT ... SELECT
-- over generate_series, no per-row loop), then ANALYZEs them. Deterministic: nothing is random; every
-- value is derived from the row's ids through yango.demo_hash, so the same N gives the same data, on
-- any server, every time. A larger N keeps the first drivers' data as it was (driver 17 is always the
-- same driver).
--
-- The messiness a collection view has to survive, in rough proportions:
--   drivers        10% reached no milestone at all; 7% are blocked, 15% inactive
--   milestones     6 thresholds (5, 10, 25, 50, 100, 200 trips); a driver who reached 50 reached 5 too
--   claims         9% of reached milestones never claimed; 13% of claimed grains re-filed (4% twice),
--                  earlier filings REJECTED or DUPLICATE with another amount; a few claims (4% of the
--                  drivers' next milestone) are filed for a milestone not reached (never paid)
--   payments       of claimed grains: 18% unpaid, 48% one payment in full, 14% one partial payment,
--                  20% two installments; 25% of unclaimed milestones are paid anyway
--   payment feed   lifecycles: stuck_pending 12% (1 version), confirmed 50% (2), resent 23% (3, a third
--                  of them with a revised amount), reversed 8% (3), clawback 7% (3, 10% taken back)
--   ledger         receivable + settlement on the Yango side, payable (80% driver share) + payout on
--                  the driver side; 25% of payables not paid out yet; reversals and restatements signed;
--                  about half of the payments stuck in PENDING not booked at all yet
--
-- Helper functions (inlined by the planner, so the generator is a handful of plain INSERT ... SELECTs):
--   yango.demo_hash(x, salt)          integer hash of an id, in [0, 2^31)
--   yango.demo_driver_plan(drivers)   one row per driver: park, hiring time, milestones reached
--   yango.demo_slot_plan(drivers)     one row per (driver, milestone) that has a milestone or a claim
--   yango.demo_payment_plan(drivers)  one row per payment: amounts, lifecycle and times of its versions
-- Each plan ends with OFFSET 0, a planner fence: without it the planner pulls the plan up into its
-- caller and re-evaluates a column's whole expression (hashes included) wherever the column is used;
-- with it every column is computed once per row.
-- Times are computed as Unix epoch seconds (bigint) and converted with to_timestamp() at the end, so
-- they do not depend on the session's TimeZone.
-- =====================================================================================================

-- The plans' result columns may change from one version of this file to the next, which CREATE OR
-- REPLACE refuses: drop them first (nothing depends on them but the generator, which looks them up
-- when it runs).
DROP FUNCTION IF EXISTS yango.demo_payment_plan(integer);
DROP FUNCTION IF EXISTS yango.demo_slot_plan(integer);
DROP FUNCTION IF EXISTS yango.demo_driver_plan(integer);

-- PostgreSQL's own 64-bit integer hash (the one hash partitioning relies on, so it is stable across
-- releases and platforms), salted so that each decision about the same id is independent.
CREATE OR REPLACE FUNCTION yango.demo_hash(x bigint, salt integer)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (hashint8extended(x, salt) & 2147483647)::integer
$$;

-- One row per driver: what the other plans need to know about a driver.
--   park_id        1..12 (6 parks in Peru, 3 in Colombia, 3 in Chile: the currency follows the park)
--   hired_epoch    between 2022-01-01 and 2023-12-22
--   reached_count  how many of the 6 milestones the driver reached (0..6)
CREATE FUNCTION yango.demo_driver_plan(drivers integer)
RETURNS TABLE (driver_id bigint, park_id integer, hired_epoch bigint, reached_count integer)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT g.d::bigint,
           1 + yango.demo_hash(g.d, 11) % 12,
           1640995200 + yango.demo_hash(g.d, 12) % (720 * 86400),
           width_bucket(yango.demo_hash(g.d, 1) % 100, ARRAY[10, 20, 32, 47, 65, 82])
    FROM generate_series(1, drivers) AS g(d)
    OFFSET 0  -- computed once per row (see the note above)
$$;

-- One row per (driver, milestone slot) that matters: every milestone reached, plus the next milestone
-- when a claim was (wrongly) filed for it. slot_key = driver_id * 8 + slot (slot 1..6) keys every
-- decision about the grain; claim and payment ids are built from it, so they are unique by construction.
--   claim_filings  0 (not claimed), 1, 2 or 3 claims for the grain
--   pay_pattern    0 no payment, 1 one payment in full, 2 one partial payment, 3 two installments
CREATE FUNCTION yango.demo_slot_plan(drivers integer)
RETURNS TABLE (
    driver_id          bigint,
    slot_key           bigint,
    milestone_value    integer,
    reached            boolean,
    milestone_epoch    bigint,
    currency           char(3),
    base_amount        numeric,
    claim_filings      integer,
    first_filed_epoch  bigint,
    refile_gap         bigint,
    pay_pattern        integer
)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT dp.driver_id,
           s.slot_key,
           (ARRAY[5, 10, 25, 50, 100, 200])[s.slot],
           s.slot <= dp.reached_count,
           -- milestone k about 5*k^2 days after hiring: 5, 20, 45, 80, 125, 180 days (+ up to 4 days)
           dp.hired_epoch + s.slot * s.slot * 5 * 86400 + yango.demo_hash(s.slot_key, 21) % (4 * 86400),
           (ARRAY['PEN', 'PEN', 'PEN', 'PEN', 'PEN', 'PEN', 'COP', 'COP', 'COP', 'CLP', 'CLP', 'CLP'])[dp.park_id],
           (ARRAY[15, 25, 60, 110, 200, 380])[s.slot]
               * (ARRAY[1, 1, 1, 1, 1, 1, 1000, 1000, 1000, 250, 250, 250])[dp.park_id],
           CASE WHEN c.claimed THEN 1 + width_bucket(yango.demo_hash(s.slot_key, 3) % 100, ARRAY[87, 96])
                ELSE 0 END,
           dp.hired_epoch + s.slot * s.slot * 5 * 86400 + 4 * 86400 + yango.demo_hash(s.slot_key, 22) % (10 * 86400),
           12 * 86400 + yango.demo_hash(s.slot_key, 23) % (30 * 86400),
           CASE WHEN s.slot > dp.reached_count THEN 0           -- claim for a milestone not reached
                WHEN c.claimed THEN width_bucket(c.pay_roll, ARRAY[18, 66, 80])
                WHEN c.pay_roll < 25 THEN 1                     -- paid although nobody claimed it
                ELSE 0 END
    FROM yango.demo_driver_plan(drivers) AS dp
    CROSS JOIN LATERAL generate_series(1, least(dp.reached_count + 1, 6)) AS g(slot)
    CROSS JOIN LATERAL (SELECT g.slot AS slot, dp.driver_id * 8 + g.slot AS slot_key) AS s
    CROSS JOIN LATERAL (
        SELECT yango.demo_hash(s.slot_key, 2) % 100
                   < CASE WHEN s.slot <= dp.reached_count THEN 91 ELSE 4 END AS claimed,
               yango.demo_hash(s.slot_key, 4) % 100 AS pay_roll
    ) AS c
    WHERE s.slot <= dp.reached_count OR c.claimed
    OFFSET 0
$$;

-- One row per payment. payment_id = slot_key * 4 + installment (1 or 2).
--   lifecycle      stuck_pending | confirmed | resent | reversed | clawback (see the header)
--   amount_initial what the first version says; amount_revised what a re-sent payment finally says;
--                  amount_final what a clawback leaves
--   t1, t2, t3     epoch seconds of versions 1, 2, 3; t_payout when the driver's share was paid out
--   paid_out       whether the driver's share was paid out (75%)
--   booked         whether the ledger booked the receivable yet (always, except 45% of the payments
--                  stuck in PENDING: the feed is ahead of the ledger)
CREATE FUNCTION yango.demo_payment_plan(drivers integer)
RETURNS TABLE (
    payment_id       bigint,
    driver_id        bigint,
    milestone_value  integer,
    currency         char(3),
    lifecycle        text,
    amount_initial   numeric,
    amount_revised   numeric,
    amount_final     numeric,
    t1               bigint,
    t2               bigint,
    t3               bigint,
    t_payout         bigint,
    paid_out         boolean,
    booked           boolean
)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT p.payment_id,
           sp.driver_id,
           sp.milestone_value,
           sp.currency,
           a.lifecycle,
           a.a0,
           CASE WHEN yango.demo_hash(p.payment_id, 14) % 3 = 0 THEN a.a0 - round(a.a0 * 0.05, 2) ELSE a.a0 END,
           round(a.a0 * 0.9, 2),
           t.t1,
           t.t2,
           t.t3,
           CASE a.lifecycle WHEN 'resent' THEN t.t3 ELSE t.t2 END
               + 3600 + yango.demo_hash(p.payment_id, 10) % (7 * 86400),
           yango.demo_hash(p.payment_id, 13) % 100 < 75,
           a.lifecycle <> 'stuck_pending' OR yango.demo_hash(p.payment_id, 15) % 100 < 55
    FROM yango.demo_slot_plan(drivers) AS sp
    CROSS JOIN LATERAL generate_series(1, CASE sp.pay_pattern WHEN 3 THEN 2 ELSE 1 END) AS i(n)
    CROSS JOIN LATERAL (SELECT sp.slot_key * 4 + i.n AS payment_id) AS p
    CROSS JOIN LATERAL (
        SELECT CASE sp.pay_pattern
                   WHEN 1 THEN sp.base_amount
                   WHEN 2 THEN round(sp.base_amount * (30 + yango.demo_hash(p.payment_id, 6) % 51) / 100, 2)
                   WHEN 3 THEN CASE i.n WHEN 1 THEN round(sp.base_amount / 2, 2)
                                        ELSE sp.base_amount - round(sp.base_amount / 2, 2) END
               END AS a0,
               (ARRAY['stuck_pending', 'confirmed', 'resent', 'reversed', 'clawback'])
                   [1 + width_bucket(yango.demo_hash(p.payment_id, 5) % 100, ARRAY[12, 62, 85, 93])] AS lifecycle
    ) AS a
    CROSS JOIN LATERAL (
        -- the first version arrives 2-22 days after the last filing (or the milestone, when unclaimed);
        -- a second installment 15 days after the first
        SELECT CASE WHEN sp.claim_filings > 0
                    THEN sp.first_filed_epoch + (sp.claim_filings - 1) * sp.refile_gap
                    ELSE sp.milestone_epoch END
                   + 2 * 86400 + yango.demo_hash(p.payment_id, 7) % (20 * 86400) + (i.n - 1) * 15 * 86400 AS t1
    ) AS t0
    CROSS JOIN LATERAL (
        SELECT t0.t1,
               t0.t1 + 3600 + yango.demo_hash(p.payment_id, 8) % (5 * 86400) AS t2,
               t0.t1 + 3600 + yango.demo_hash(p.payment_id, 8) % (5 * 86400)
                   + 3600 + yango.demo_hash(p.payment_id, 9) % (20 * 86400) AS t3
    ) AS t
    WHERE sp.pay_pattern > 0
    OFFSET 0
$$;

-- jit = off: the plans' estimates are huge, so PostgreSQL would spend seconds compiling expressions
-- that run for milliseconds at the default size; at a million drivers it makes no difference.
CREATE OR REPLACE FUNCTION yango.generate_demo_data(drivers integer)
RETURNS void
LANGUAGE plpgsql
SET jit = off
AS $$
BEGIN
    IF drivers IS NULL OR drivers < 1 THEN
        RAISE EXCEPTION 'yango.generate_demo_data: drivers must be a positive integer (>= 1), got %',
                        coalesce(drivers::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass the number of drivers to generate, e.g. SELECT yango.generate_demo_data(20000);';
    END IF;

    TRUNCATE yango.ledger_entries, yango.payments_raw, yango.cabinet_claims,
             yango.driver_milestones, yango.drivers;

    INSERT INTO yango.drivers
        (driver_id, park_id, park_name, city, full_name, hired_at, status, trips_completed)
    SELECT dp.driver_id,
           dp.park_id,
           (ARRAY['Lima Norte', 'Lima Centro', 'Lima Sur', 'Callao Puerto', 'Miraflores Express',
                  'San Juan de Lurigancho', 'Bogota Norte', 'Bogota Sur', 'Medellin Centro',
                  'Santiago Centro', 'Providencia', 'Valparaiso'])[dp.park_id],
           (ARRAY['Lima', 'Lima', 'Lima', 'Callao', 'Lima', 'Lima', 'Bogota', 'Bogota', 'Medellin',
                  'Santiago', 'Santiago', 'Valparaiso'])[dp.park_id],
           (ARRAY['Juan', 'Maria', 'Carlos', 'Ana', 'Luis', 'Rosa', 'Jorge', 'Carmen', 'Jose', 'Lucia',
                  'Miguel', 'Elena', 'Pedro', 'Sofia', 'Diego', 'Valeria', 'Andres', 'Camila', 'Fernando',
                  'Gabriela'])[1 + yango.demo_hash(dp.driver_id, 14) % 20]
               || ' ' ||
           (ARRAY['Quispe', 'Flores', 'Rodriguez', 'Garcia', 'Mamani', 'Gonzalez', 'Rojas', 'Torres',
                  'Vargas', 'Castillo', 'Ramirez', 'Mendoza', 'Gomez', 'Diaz', 'Huaman', 'Chavez', 'Munoz',
                  'Silva', 'Perez', 'Morales'])[1 + yango.demo_hash(dp.driver_id, 15) % 20]
               || ' ' ||
           (ARRAY['Quispe', 'Flores', 'Rodriguez', 'Garcia', 'Mamani', 'Gonzalez', 'Rojas', 'Torres',
                  'Vargas', 'Castillo', 'Ramirez', 'Mendoza', 'Gomez', 'Diaz', 'Huaman', 'Chavez', 'Munoz',
                  'Silva', 'Perez', 'Morales'])[1 + yango.demo_hash(dp.driver_id, 16) % 20],
           to_timestamp(dp.hired_epoch),
           (ARRAY['active', 'inactive', 'blocked'])
               [1 + width_bucket(yango.demo_hash(dp.driver_id, 13) % 100, ARRAY[78, 93])],
           -- consistent with the milestones: at least the last threshold reached, below the next one
           (ARRAY[0, 5, 10, 25, 50, 100, 200])[dp.reached_count + 1]
               + yango.demo_hash(dp.driver_id, 17) % (ARRAY[5, 5, 15, 25, 50, 100, 800])[dp.reached_count + 1]
    FROM yango.demo_driver_plan(drivers) AS dp;

    INSERT INTO yango.driver_milestones (driver_id, milestone_value, reached_at)
    SELECT sp.driver_id, sp.milestone_value, to_timestamp(sp.milestone_epoch)
    FROM yango.demo_slot_plan(drivers) AS sp
    WHERE sp.reached;

    -- claim_id = slot_key * 4 + filing_seq; the last filing carries the right amount, earlier ones were
    -- rejected or duplicated with another amount.
    INSERT INTO yango.cabinet_claims
        (claim_id, driver_id, milestone_value, filing_seq, filed_at, amount, currency, cabinet_status)
    SELECT sp.slot_key * 4 + f.seq,
           sp.driver_id,
           sp.milestone_value,
           f.seq,
           to_timestamp(sp.first_filed_epoch + (f.seq - 1) * sp.refile_gap),
           CASE WHEN f.seq < sp.claim_filings
                THEN round(sp.base_amount * (85 + yango.demo_hash(sp.slot_key * 4 + f.seq, 18) % 30) / 100, 2)
                ELSE sp.base_amount END,
           sp.currency,
           CASE WHEN f.seq < sp.claim_filings
                THEN CASE WHEN yango.demo_hash(sp.slot_key * 4 + f.seq, 19) % 100 < 70
                          THEN 'REJECTED' ELSE 'DUPLICATE' END
                WHEN NOT sp.reached
                THEN CASE WHEN yango.demo_hash(sp.slot_key * 4 + f.seq, 19) % 100 < 80
                          THEN 'REJECTED' ELSE 'SUBMITTED' END
                ELSE (ARRAY['ACCEPTED', 'SUBMITTED', 'REJECTED'])
                         [1 + width_bucket(yango.demo_hash(sp.slot_key * 4 + f.seq, 19) % 100, ARRAY[80, 96])]
           END
    FROM yango.demo_slot_plan(drivers) AS sp
    CROSS JOIN LATERAL generate_series(1, sp.claim_filings) AS f(seq);

    -- The feed: one row per version of each payment, following its lifecycle.
    INSERT INTO yango.payments_raw
        (payment_id, version, driver_id, milestone_value, amount, currency, status, received_at)
    SELECT p.payment_id,
           v.version,
           p.driver_id,
           p.milestone_value,
           CASE v.amount_kind WHEN 'initial' THEN p.amount_initial
                              WHEN 'revised' THEN p.amount_revised
                              ELSE p.amount_final END,
           p.currency,
           v.status,
           to_timestamp(CASE v.at WHEN 1 THEN p.t1 WHEN 2 THEN p.t2 ELSE p.t3 END)
    FROM yango.demo_payment_plan(drivers) AS p
    JOIN (VALUES
            ('stuck_pending', 1, 'PENDING',   'initial', 1),
            ('confirmed',     1, 'PENDING',   'initial', 1),
            ('confirmed',     2, 'CONFIRMED', 'initial', 2),
            ('resent',        1, 'PENDING',   'initial', 1),
            ('resent',        2, 'PENDING',   'revised', 2),
            ('resent',        3, 'CONFIRMED', 'revised', 3),
            ('reversed',      1, 'PENDING',   'initial', 1),
            ('reversed',      2, 'CONFIRMED', 'initial', 2),
            ('reversed',      3, 'REVERSED',  'initial', 3),
            ('clawback',      1, 'PENDING',   'initial', 1),
            ('clawback',      2, 'CONFIRMED', 'initial', 2),
            ('clawback',      3, 'CONFIRMED', 'final',   3)
         ) AS v(lifecycle, version, status, amount_kind, at)
      ON v.lifecycle = p.lifecycle;

    -- The ledger: entry_id = payment_id * 8 + entry_no. Amount kinds: the payment's amount (initial,
    -- revised, final), the driver's 80% share of it (share_*), and signed corrections.
    INSERT INTO yango.ledger_entries
        (entry_id, payment_id, driver_id, milestone_value, entry_type, amount, currency, booked_at)
    SELECT p.payment_id * 8 + e.entry_no,
           p.payment_id,
           p.driver_id,
           p.milestone_value,
           e.entry_type,
           CASE e.amount_kind
               WHEN 'initial'         THEN p.amount_initial
               WHEN 'revised'         THEN p.amount_revised
               WHEN 'revision'        THEN p.amount_revised - p.amount_initial
               WHEN 'minus_initial'   THEN -p.amount_initial
               WHEN 'clawback'        THEN p.amount_final - p.amount_initial
               WHEN 'share_initial'   THEN round(p.amount_initial * 0.8, 2)
               WHEN 'share_revised'   THEN round(p.amount_revised * 0.8, 2)
               WHEN 'minus_share'     THEN -round(p.amount_initial * 0.8, 2)
               WHEN 'share_clawback'  THEN round(p.amount_final * 0.8, 2) - round(p.amount_initial * 0.8, 2)
           END,
           p.currency,
           to_timestamp(CASE e.at WHEN 1 THEN p.t1 WHEN 2 THEN p.t2 WHEN 3 THEN p.t3 ELSE p.t_payout END)
    FROM yango.demo_payment_plan(drivers) AS p
    JOIN (VALUES
            ('stuck_pending', 1, 'receivable', 'initial',        1, 'booked'),
            ('confirmed',     1, 'receivable', 'initial',        1, NULL),
            ('confirmed',     2, 'settlement', 'initial',        2, NULL),
            ('confirmed',     3, 'payable',    'share_initial',  2, NULL),
            ('confirmed',     4, 'payout',     'share_initial',  4, 'paid_out'),
            ('resent',        1, 'receivable', 'initial',        1, NULL),
            ('resent',        2, 'receivable', 'revision',       2, 'revised'),
            ('resent',        3, 'settlement', 'revised',        3, NULL),
            ('resent',        4, 'payable',    'share_revised',  3, NULL),
            ('resent',        5, 'payout',     'share_revised',  4, 'paid_out'),
            ('reversed',      1, 'receivable', 'initial',        1, NULL),
            ('reversed',      2, 'settlement', 'initial',        2, NULL),
            ('reversed',      3, 'payable',    'share_initial',  2, NULL),
            ('reversed',      4, 'reversal',   'minus_initial',  3, NULL),
            ('reversed',      5, 'payable',    'minus_share',    3, NULL),
            ('clawback',      1, 'receivable', 'initial',        1, NULL),
            ('clawback',      2, 'settlement', 'initial',        2, NULL),
            ('clawback',      3, 'payable',    'share_initial',  2, NULL),
            ('clawback',      4, 'receivable', 'clawback',       3, NULL),
            ('clawback',      5, 'reversal',   'clawback',       3, NULL),
            ('clawback',      6, 'payable',    'share_clawback', 3, NULL)
         ) AS e(lifecycle, entry_no, entry_type, amount_kind, at, only_if)
      ON e.lifecycle = p.lifecycle
    WHERE e.only_if IS NULL
       OR (e.only_if = 'booked' AND p.booked)
       OR (e.only_if = 'paid_out' AND p.paid_out)
       OR (e.only_if = 'revised' AND p.amount_revised <> p.amount_initial);

    ANALYZE yango.drivers, yango.driver_milestones, yango.cabinet_claims,
            yango.payments_raw, yango.ledger_entries;
END;
$$;

COMMENT ON FUNCTION yango.generate_demo_data(integer) IS
    'mv-refresh demo: regenerate the yango source tables for N drivers (deterministic, about 27 rows per driver)';
