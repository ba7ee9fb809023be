-- The projection's staging tables, for the two kinds of row that update rows already there (an
-- account's flags after a close, reopen or limits; a hold's resolution); everything else is
-- copied straight into its table, whose unique key refuses a duplicate. Until version 3 these
-- were TEMP tables of the writer's session, but a transaction that touches a temporary table
-- cannot be prepared (PREPARE TRANSACTION), and the writer commits a group's sessions together
-- by two-phase commit (docs/HISTORY.md, "The exactly-once argument"). UNLOGGED: never WAL-logged,
-- emptied by a crash of PostgreSQL, which is all a staging table needs. Only the projection's
-- writer uses them, one at a time (it holds the writer lock), and it empties them (TRUNCATE) in
-- the transaction that filled them, so they are empty at every commit.
CREATE UNLOGGED TABLE stage_account_updates (
    id uuid NOT NULL,
    flags integer NOT NULL,
    updated_op bigint NOT NULL
);
CREATE UNLOGGED TABLE stage_resolutions (
    hold_id uuid NOT NULL,
    status text NOT NULL,
    resolved_by uuid,
    resolved_amount numeric(39, 0),
    resolved_timestamp_ns bigint NOT NULL,
    resolved_op bigint NOT NULL
);
