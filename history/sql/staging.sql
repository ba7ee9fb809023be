-- The projection's staging tables: session-local (TEMP, so unlogged and invisible to readers),
-- emptied at every commit. A group of ops is loaded here with binary COPY, then moved into the
-- real tables with INSERT … SELECT / UPDATE … FROM in the same transaction as the position.
-- Created once per writer connection; their columns are the real tables' in the same order.
CREATE TEMP TABLE IF NOT EXISTS stage_ops (LIKE journal_ops) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_accounts (LIKE accounts) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_account_updates (
    id uuid NOT NULL,
    flags integer NOT NULL,
    updated_op bigint NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_account_events (LIKE account_events) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_transfers (LIKE transfers) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_holds (
    id uuid NOT NULL,
    debit_account_id uuid NOT NULL,
    credit_account_id uuid NOT NULL,
    amount numeric(39, 0) NOT NULL,
    ledger bigint NOT NULL,
    timestamp_ns bigint NOT NULL,
    timeout_s bigint NOT NULL,
    op bigint NOT NULL,
    status text NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_resolutions (
    hold_id uuid NOT NULL,
    status text NOT NULL,
    resolved_by uuid,
    resolved_amount numeric(39, 0),
    resolved_timestamp_ns bigint NOT NULL,
    resolved_op bigint NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_entries (LIKE ledger_entries) ON COMMIT DELETE ROWS;
