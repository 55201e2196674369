-- =====================================================================================================
-- Demo warehouse, part 1 of 3: the source tables of a Yango fleet partner (schema `yango`).
--
-- What a partner fleet receives from, and books about, Yango's milestone bonuses:
--   yango.drivers            the partner's drivers (one row per driver, with park and city)
--   yango.driver_milestones  trip milestones a driver reached (5, 10, 25, 50, 100, 200 trips)
--   yango.cabinet_claims     bonus claims filed in the Yango cabinet; a grain (driver, milestone) can be
--                            re-filed, so a minority of grains has 2 or 3 claims
--   yango.payments_raw       the raw payment feed: every change to a payment arrives as a new version
--                            (PENDING -> CONFIRMED -> REVERSED ...), so most payments have 2-3 rows
--   yango.ledger_entries     the partner's ledger, per payment: receivable, settlement, reversal on the
--                            Yango side; payable and payout on the driver side (signed amounts)
--
-- Idempotent: safe to run again on a database that already has the tables (and their data).
-- The data comes from yango.generate_demo_data(drivers) in 02_generate.sql.
-- No foreign keys on purpose: a feed delivers what it delivers (a claim for a driver the fleet no
-- longer lists, a ledger line for a payment not in the feed yet), and the bulk load stays fast.
-- =====================================================================================================

CREATE SCHEMA IF NOT EXISTS yango;

COMMENT ON SCHEMA yango IS 'mv-refresh demo warehouse: source tables of a Yango fleet partner';

CREATE TABLE IF NOT EXISTS yango.drivers (
    driver_id        bigint      NOT NULL,
    park_id          integer     NOT NULL,
    park_name        text        NOT NULL,
    city             text        NOT NULL,
    full_name        text        NOT NULL,
    hired_at         timestamptz NOT NULL,
    status           text        NOT NULL,
    trips_completed  integer     NOT NULL,
    CONSTRAINT drivers_pkey PRIMARY KEY (driver_id),
    CONSTRAINT drivers_status_check CHECK (status IN ('active', 'inactive', 'blocked')),
    CONSTRAINT drivers_trips_check CHECK (trips_completed >= 0)
);

CREATE INDEX IF NOT EXISTS drivers_park_idx ON yango.drivers (park_id);

CREATE TABLE IF NOT EXISTS yango.driver_milestones (
    driver_id        bigint      NOT NULL,
    milestone_value  integer     NOT NULL,
    reached_at       timestamptz NOT NULL,
    CONSTRAINT driver_milestones_pkey PRIMARY KEY (driver_id, milestone_value),
    CONSTRAINT driver_milestones_value_check CHECK (milestone_value > 0)
);

CREATE TABLE IF NOT EXISTS yango.cabinet_claims (
    claim_id         bigint        NOT NULL,
    driver_id        bigint        NOT NULL,
    milestone_value  integer       NOT NULL,
    filing_seq       integer       NOT NULL,
    filed_at         timestamptz   NOT NULL,
    amount           numeric(12,2) NOT NULL,
    currency         char(3)       NOT NULL,
    cabinet_status   text          NOT NULL,
    CONSTRAINT cabinet_claims_pkey PRIMARY KEY (claim_id),
    CONSTRAINT cabinet_claims_status_check
        CHECK (cabinet_status IN ('SUBMITTED', 'ACCEPTED', 'REJECTED', 'DUPLICATE')),
    CONSTRAINT cabinet_claims_amount_check CHECK (amount > 0)
);

-- The grain lookup (claims of a driver's milestone, newest last).
CREATE INDEX IF NOT EXISTS cabinet_claims_grain_idx
    ON yango.cabinet_claims (driver_id, milestone_value, filed_at);

CREATE TABLE IF NOT EXISTS yango.payments_raw (
    payment_id       bigint        NOT NULL,
    version          integer       NOT NULL,
    driver_id        bigint        NOT NULL,
    milestone_value  integer       NOT NULL,
    amount           numeric(12,2) NOT NULL,
    currency         char(3)       NOT NULL,
    status           text          NOT NULL,
    received_at      timestamptz   NOT NULL,
    CONSTRAINT payments_raw_pkey PRIMARY KEY (payment_id, version),
    CONSTRAINT payments_raw_status_check CHECK (status IN ('PENDING', 'CONFIRMED', 'REVERSED')),
    CONSTRAINT payments_raw_version_check CHECK (version >= 1)
);

CREATE INDEX IF NOT EXISTS payments_raw_grain_idx ON yango.payments_raw (driver_id, milestone_value);

CREATE TABLE IF NOT EXISTS yango.ledger_entries (
    entry_id         bigint        NOT NULL,
    payment_id       bigint        NOT NULL,
    driver_id        bigint        NOT NULL,
    milestone_value  integer       NOT NULL,
    entry_type       text          NOT NULL,
    amount           numeric(12,2) NOT NULL,
    currency         char(3)       NOT NULL,
    booked_at        timestamptz   NOT NULL,
    CONSTRAINT ledger_entries_pkey PRIMARY KEY (entry_id),
    CONSTRAINT ledger_entries_type_check
        CHECK (entry_type IN ('receivable', 'settlement', 'reversal', 'payable', 'payout'))
);

CREATE INDEX IF NOT EXISTS ledger_entries_payment_idx ON yango.ledger_entries (payment_id);

COMMENT ON TABLE yango.drivers IS 'Drivers of the fleet partner (demo data)';
COMMENT ON TABLE yango.driver_milestones IS 'Trip milestones reached, one row per (driver_id, milestone_value)';
COMMENT ON TABLE yango.cabinet_claims IS
    'Milestone bonus claims filed in the Yango cabinet; a grain may be re-filed (filing_seq 1, 2, 3)';
COMMENT ON TABLE yango.payments_raw IS
    'Raw payment feed: one row per version of a payment; the highest version is the current state';
COMMENT ON TABLE yango.ledger_entries IS
    'Ledger lines per payment, signed: receivable/settlement/reversal (Yango side), payable/payout (driver side)';
