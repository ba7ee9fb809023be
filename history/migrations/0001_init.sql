-- walletd history, schema version 1: the double-entry projection of the durable journal.
--
-- Written only by `walletd project postgres` (one writer, enforced by the position row), read
-- by `walletd history`, `walletd reconcile` and the HTTP gateway. Ids are the engine's 128-bit
-- ids as uuid (big-endian: a transfer id's top 48 bits are its creation time, so uuid order is
-- time order); amounts are numeric(39, 0), which holds every u128; timestamps are the engine's
-- nanoseconds since the Unix epoch (UTC) as bigint. Documented table by table in docs/HISTORY.md.

-- The projection's position: the last op whose rows are in, and the journal's chain checksum at
-- that op. Updated in the same transaction as the rows, so rows and position cannot disagree.
CREATE TABLE projection_position (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    op           bigint NOT NULL CHECK (op >= 0),
    checksum     uuid NOT NULL,
    timestamp_ns bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projection_position (op, checksum, timestamp_ns)
VALUES (0, '00000000-0000-0000-0000-000000000000', 0);

-- Every op projected, with its chain checksum: the journal's head published outside the data
-- directory (a rewritten journal disagrees with it), and the op index of the audit trail.
CREATE TABLE journal_ops (
    op             bigint PRIMARY KEY,
    timestamp_ns   bigint NOT NULL,
    checksum       uuid NOT NULL UNIQUE,
    -- 'pulse', 'create_accounts', 'create_transfers', 'close_accounts', 'reopen_accounts',
    -- 'set_account_limits' or 'checkpoint'.
    kind           text NOT NULL,
    events_count   integer NOT NULL,
    failed_count   integer NOT NULL,
    changes_count  integer NOT NULL
);

CREATE TABLE accounts (
    id             uuid PRIMARY KEY,
    ledger         bigint NOT NULL,
    code           integer NOT NULL,
    -- The engine's AccountFlags as of updated_op (CLOSED = 8, LIMITS = 16).
    flags          integer NOT NULL,
    user_data_128  uuid NOT NULL,
    user_data_64   numeric(20, 0) NOT NULL,
    user_data_32   bigint NOT NULL,
    timestamp_ns   bigint NOT NULL,
    created_op     bigint NOT NULL REFERENCES journal_ops (op),
    updated_op     bigint NOT NULL REFERENCES journal_ops (op)
);

-- What happened to accounts after creation: closed, reopened, limits set (with the limits).
CREATE TABLE account_events (
    op                        bigint NOT NULL REFERENCES journal_ops (op),
    change_index              integer NOT NULL,
    account_id                uuid NOT NULL REFERENCES accounts (id),
    kind                      text NOT NULL,
    timestamp_ns              bigint NOT NULL,
    flags                     integer NOT NULL,
    limit_flags               bigint,
    overdraft_max             numeric(39, 0),
    balance_max               numeric(39, 0),
    daily_debit_amount_max    numeric(39, 0),
    monthly_debit_amount_max  numeric(39, 0),
    daily_debit_count_max     bigint,
    monthly_debit_count_max   bigint,
    PRIMARY KEY (op, change_index)
);
CREATE INDEX account_events_by_account ON account_events (account_id, timestamp_ns);

-- Every transfer the engine created, any age. status: 'posted', 'voided' (a void), 'pending',
-- 'pending_posted', 'pending_voided', 'pending_expired' (a hold, updated when it resolves).
CREATE TABLE transfers (
    id                 uuid PRIMARY KEY,
    debit_account_id   uuid NOT NULL,
    credit_account_id  uuid NOT NULL,
    amount             numeric(39, 0) NOT NULL,
    pending_id         uuid,
    user_data_128      uuid NOT NULL,
    user_data_64       numeric(20, 0) NOT NULL,
    user_data_32       bigint NOT NULL,
    timeout_s          bigint NOT NULL,
    ledger             bigint NOT NULL,
    code               integer NOT NULL,
    flags              integer NOT NULL,
    timestamp_ns       bigint NOT NULL,
    op                 bigint NOT NULL,
    status             text NOT NULL
);
CREATE INDEX transfers_by_pending ON transfers (pending_id) WHERE pending_id IS NOT NULL;

-- Holds (pending transfers) and how each resolved: posted (fully or partly), voided, expired.
CREATE TABLE holds (
    id                      uuid PRIMARY KEY REFERENCES transfers (id),
    debit_account_id        uuid NOT NULL,
    credit_account_id       uuid NOT NULL,
    amount                  numeric(39, 0) NOT NULL,
    ledger                  bigint NOT NULL,
    timestamp_ns            bigint NOT NULL,
    timeout_s               bigint NOT NULL,
    op                      bigint NOT NULL,
    status                  text NOT NULL,
    resolved_by             uuid,
    resolved_amount         numeric(39, 0),
    resolved_timestamp_ns   bigint,
    resolved_op             bigint
);
CREATE INDEX holds_open ON holds (debit_account_id) WHERE status = 'pending';

-- The double entries: one debit row and one credit row per posted movement (a single-phase
-- transfer, or the posting of a hold), each with the account's balances right after it. A
-- statement is a range scan of (account_id, timestamp_ns). Partitioned by UTC month of the
-- engine timestamp; the projection creates each month's partition when it first needs it.
CREATE TABLE ledger_entries (
    account_id               uuid NOT NULL,
    timestamp_ns             bigint NOT NULL,
    op                       bigint NOT NULL,
    change_index             integer NOT NULL,
    -- 'D' debit, 'C' credit.
    side                     "char" NOT NULL CHECK (side IN ('D', 'C')),
    transfer_id              uuid NOT NULL,
    counterparty_id          uuid NOT NULL,
    ledger                   bigint NOT NULL,
    amount                   numeric(39, 0) NOT NULL,
    debits_pending           numeric(39, 0) NOT NULL,
    debits_posted            numeric(39, 0) NOT NULL,
    credits_pending          numeric(39, 0) NOT NULL,
    credits_posted           numeric(39, 0) NOT NULL,
    -- Unique: every event has its own engine timestamp and debits and credits two different
    -- accounts, so an account has at most one entry per timestamp. The narrowest key that is
    -- also the statement's range-scan index (and includes the partition key, as PostgreSQL
    -- requires of a unique key on a partitioned table).
    PRIMARY KEY (account_id, timestamp_ns)
) PARTITION BY RANGE (timestamp_ns);
