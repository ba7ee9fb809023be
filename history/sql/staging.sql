-- The projection's staging tables, for the two kinds of row that update rows already there
-- (an account's flags after a close, reopen or limits; a hold's resolution). Everything else is
-- copied straight into its table, whose unique key refuses a duplicate. Session-local (TEMP, so
-- unlogged and invisible to readers), emptied at every commit; created once per writer
-- connection. A group's updates are loaded here with binary COPY, then applied with
-- UPDATE … FROM in the same transaction as the position.
CREATE TEMP TABLE IF NOT EXISTS stage_account_updates (
    id uuid NOT NULL,
    flags integer NOT NULL,
    updated_op bigint NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_resolutions (
    hold_id uuid NOT NULL,
    status text NOT NULL,
    resolved_by uuid,
    resolved_amount numeric(39, 0),
    resolved_timestamp_ns bigint NOT NULL,
    resolved_op bigint NOT NULL
) ON COMMIT DELETE ROWS;
