//! The projection (`walletd project postgres`): the durable journal into PostgreSQL, exactly
//! once.
//!
//! Two halves, bridged by a bounded channel: the **follower thread** (blocking, like the engine)
//! reads each durable op with its outcome and builds groups of ops as binary `COPY` streams
//! (`rows.rs`); the **writer** (async, on a current-thread tokio runtime) writes each group in
//! one transaction: first the position row is moved from the group's start to its end (a
//! conditional `UPDATE`, which also locks it against a second writer), then the streams are
//! copied straight into the tables (the two kinds of update through session-local staging
//! tables and `UPDATE … FROM`), then commit. Rows and position commit together or not at all,
//! so a crash at any moment resumes from the stored position with no gap and no duplicate; the
//! unique keys of the tables copied into make a duplicate impossible even if that argument
//! were wrong.
//!
//! PostgreSQL going away (stopped, restarted) is waited out: the writer reconnects with a
//! bounded backoff, reads the position back (the lost commit may have landed) and retries the
//! same group. The engine is never affected: the journal is the buffer.

use crate::error::HistoryError;
use crate::metrics::ProjectionMetrics;
use crate::pgtypes::{i64_of, Uuid128};
use crate::rows::{
    month_partition, Group, GroupBuilder, Stage, COPY_ENTRIES, STAGE_ACCOUNT_UPDATES, STAGE_RESOLUTIONS,
};
use futures_util::SinkExt;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};
use walletd_replay::{FollowOptions, Follower, Position};

#[derive(Clone, Debug)]
pub struct ProjectOptions {
    pub data_dir: PathBuf,
    pub database: tokio_postgres::Config,
    /// A group (one transaction) closes at this many rows (transfers + entries + ops)…
    pub group_rows_max: u64,
    /// …or this many ops, or when the follower has caught up.
    pub group_ops_max: u64,
    /// Groups built ahead of the writer (the channel's bound).
    pub groups_ahead: usize,
    /// PostgreSQL sessions writing a group side by side: 1 writes it in one transaction; N > 1
    /// puts the entries' key ranges in N − 1 sessions of their own and commits all N together
    /// by two-phase commit (needs `max_prepared_transactions >= N`).
    pub writers: usize,
    /// Stop once caught up with the durable journal (for tests, benchmarks, one-shot loads);
    /// otherwise follow forever.
    pub until_caught_up: bool,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Print `projected <op>` on stdout after every commit (for crash tests).
    pub print_progress: bool,
}

impl ProjectOptions {
    pub fn new(data_dir: PathBuf, database: tokio_postgres::Config) -> ProjectOptions {
        ProjectOptions {
            data_dir,
            database,
            group_rows_max: 250_000,
            group_ops_max: 1024,
            groups_ahead: 2,
            writers: 1,
            until_caught_up: false,
            metrics_addr: None,
            print_progress: false,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProjectReport {
    pub position_start: u64,
    pub position: u64,
    pub ops: u64,
    pub transfers: u64,
    pub entries: u64,
    pub groups: u64,
    pub reconnects: u64,
    pub seconds: f64,
}

/// What the follower thread sends the writer.
enum Message {
    Group(Group),
    /// Caught up with the durable journal (sent only with `until_caught_up`).
    CaughtUp,
    Failed(HistoryError),
}

/// Runs the projection on this thread (a current-thread runtime) and the follower on another.
pub fn project(options: &ProjectOptions) -> Result<ProjectReport, HistoryError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(project_async(options))
}

async fn project_async(options: &ProjectOptions) -> Result<ProjectReport, HistoryError> {
    let metrics = Arc::new(ProjectionMetrics::default());
    let _ = metrics.durable_dir.set(options.data_dir.clone());
    if let Some(addr) = options.metrics_addr {
        let bound = crate::metrics::metrics_serve(addr, Arc::clone(&metrics)).await?;
        println!("metrics on http://{bound}/metrics");
    }
    let mut writer = Writer::connect_retrying(&options.database, options.writers.max(1), &metrics).await?;
    let start = writer.position().await?;
    metrics.position_set(start.0, start.1);
    tracing::info!(position = %start.0, "projection starting");
    let (sender, mut receiver) = mpsc::channel(options.groups_ahead.max(1));
    let follower_thread = std::thread::Builder::new().name("project-follow".into()).spawn({
        let (options, metrics) = (options.clone(), Arc::clone(&metrics));
        move || follow(&options, start.0, &metrics, &sender)
    })?;
    let started = Instant::now();
    let mut report = ProjectReport { position_start: start.0.op, position: start.0.op, ..ProjectReport::default() };
    let result = loop {
        let Some(message) = receiver.recv().await else { break Ok(()) };
        let group = match message {
            Message::Group(group) => group,
            Message::CaughtUp => break Ok(()),
            Message::Failed(error) => break Err(error),
        };
        writer = match writer.group_write_retrying(&group, &options.database, &metrics).await {
            Ok(writer) => writer,
            Err(error) => break Err(error),
        };
        report.position = group.position.op;
        report.ops += group.ops_count;
        report.transfers += group.transfers_count;
        report.entries += group.entries_count;
        report.groups += 1;
        metrics.group_written(&group);
        if options.print_progress {
            println!("projected {}", group.position.op);
        }
    };
    // Dropping the receiver makes a blocked follower thread's send fail, so it ends.
    drop(receiver);
    follower_thread.join().expect("the follower thread does not panic");
    report.reconnects = metrics.reconnects();
    report.seconds = started.elapsed().as_secs_f64();
    result.map(|()| report)
}

/// The follower thread: groups of ops into the channel until the writer goes away.
fn follow(options: &ProjectOptions, start: Position, metrics: &ProjectionMetrics, sender: &mpsc::Sender<Message>) {
    if let Err(error) = follow_groups(options, start, metrics, sender) {
        let _ = sender.blocking_send(Message::Failed(error));
    }
}

fn follow_groups(
    options: &ProjectOptions,
    start: Position,
    metrics: &ProjectionMetrics,
    sender: &mpsc::Sender<Message>,
) -> Result<(), HistoryError> {
    let mut follower = Follower::open(&options.data_dir, Some(start), FollowOptions::default())?;
    loop {
        let mut builder = GroupBuilder::new(follower.position());
        while builder.ops_count() < options.group_ops_max && builder.rows_count() < options.group_rows_max {
            match follower.next_op()? {
                Some(op) => builder.op_add(&op),
                None => break,
            }
        }
        let durable = follower.op_durable();
        metrics.durable_set(if durable == u64::MAX { follower.position().op } else { durable });
        if builder.ops_count() > 0 {
            if sender.blocking_send(Message::Group(builder.finish(options.writers.saturating_sub(1).max(1)))).is_err() {
                return Ok(());
            }
            continue;
        }
        if options.until_caught_up {
            let _ = sender.blocking_send(Message::CaughtUp);
            return Ok(());
        }
        if sender.is_closed() {
            return Ok(());
        }
        follower.wait(Duration::from_millis(100))?;
    }
}

/// The writer's sessions: `main` holds the writer lock, moves the position and writes every
/// table but the entries; the `entry_sessions` (`writers − 1` of them) copy the entries' key
/// ranges side by side, and the group's transactions are committed together by two-phase
/// commit. With no entry sessions, `main` writes everything in one ordinary transaction.
struct Writer {
    main: Client,
    entry_sessions: Vec<Client>,
    /// `current_database()`, part of every prepared transaction's name (they are cluster-wide).
    database_name: String,
    /// Months whose partition is known to exist.
    partitions: BTreeSet<i64>,
}

/// Serialises writers of one database (a session-level advisory lock, held for the writer's
/// life). Distinct from the migration lock.
const WRITER_LOCK_KEY: i64 = 0x7761_6c6c_6574_7701;

/// The prefix of the prepared transactions' names: `walletd-projection:<database>:<end op>:<part>`,
/// part 0 being the main session's (the position), parts 1.. the entry sessions'.
const GID_PREFIX: &str = "walletd-projection";

async fn session_connect(database: &tokio_postgres::Config) -> Result<Client, HistoryError> {
    let (client, connection) = database.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "the projection's PostgreSQL connection ended");
        }
    });
    Ok(client)
}

impl Writer {
    async fn connect(database: &tokio_postgres::Config, writers: usize) -> Result<Writer, HistoryError> {
        assert!(writers >= 1, "at least the main session");
        let mut main = session_connect(database).await?;
        writer_lock(&main).await?;
        let database_name: String = main.query_one("SELECT current_database()", &[]).await?.get(0);
        // Before migrating: a prepared transaction left by a crash holds locks a migration waits on.
        prepared_resolve(&main, &database_name).await?;
        crate::schema::migrate(&mut main).await?;
        if writers > 1 {
            prepared_capacity_check(&main, writers).await?;
        }
        let mut entry_sessions = Vec::with_capacity(writers - 1);
        for _ in 1..writers {
            entry_sessions.push(session_connect(database).await?);
        }
        Ok(Writer { main, entry_sessions, database_name, partitions: BTreeSet::new() })
    }

    /// Connects, waiting out a database that is down (bounded backoff, forever).
    async fn connect_retrying(
        database: &tokio_postgres::Config,
        writers: usize,
        metrics: &ProjectionMetrics,
    ) -> Result<Writer, HistoryError> {
        let mut backoff = Duration::from_millis(20);
        loop {
            match Writer::connect(database, writers).await {
                Ok(writer) => return Ok(writer),
                Err(error) if error.is_transient() => {
                    metrics.reconnect_failed();
                    tracing::warn!(%error, backoff_ms = backoff.as_millis() as u64, "PostgreSQL unavailable; waiting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn position(&self) -> Result<(Position, u64), HistoryError> {
        position_read(&self.main).await
    }

    /// Writes `group`, reconnecting and retrying while PostgreSQL is away; returns the writer
    /// to go on with. A reconnect first drops this writer's sessions (releasing the writer
    /// lock), then resolves any prepared transaction the lost attempt left, so the stored
    /// position says whether the lost attempt committed.
    async fn group_write_retrying(
        mut self,
        group: &Group,
        database: &tokio_postgres::Config,
        metrics: &ProjectionMetrics,
    ) -> Result<Writer, HistoryError> {
        loop {
            let error = match self.group_write(group).await {
                Ok(()) => return Ok(self),
                Err(error) if error.is_transient() => error,
                Err(error) => return Err(error),
            };
            tracing::warn!(%error, op = group.position.op, "writing a group failed; reconnecting");
            let writers = self.entry_sessions.len() + 1;
            drop(self);
            self = Writer::connect_retrying(database, writers, metrics).await?;
            metrics.reconnected();
            let (found, _) = self.position().await?;
            if found == group.position {
                return Ok(self);
            }
            if found != group.after {
                return Err(HistoryError::PositionConflict { expected: group.after, found });
            }
        }
    }

    async fn group_write(&mut self, group: &Group) -> Result<(), HistoryError> {
        assert_eq!(group.entry_stages.len(), self.entry_sessions.len().max(1), "one entry part per session");
        self.partitions_create(group).await?;
        let entries_table = entries_table(group);
        if self.entry_sessions.is_empty() {
            let result = main_part_write(&self.main, group, Some((&entries_table, &group.entry_stages[0]))).await;
            return match result {
                Ok(()) => Ok(self.main.batch_execute("COMMIT").await?),
                Err(error) => Err(session_rollback(&self.main, error).await),
            };
        }
        let gid = |part: usize| gid_of(&self.database_name, group.position.op, part);
        let entry_parts = self.entry_sessions.iter().zip(&group.entry_stages).enumerate();
        let entry_writes = entry_parts
            .filter(|(_, (_, stage))| stage.rows_count > 0)
            .map(|(index, (session, stage))| entry_part_prepare(session, &entries_table, stage, gid(index + 1)));
        let (main_result, entry_results) = futures_util::future::join(
            main_part_write(&self.main, group, None),
            futures_util::future::join_all(entry_writes),
        )
        .await;
        let mut prepared = Vec::new();
        let mut failure = main_result.err();
        for result in entry_results {
            match result {
                Ok(gid) => prepared.push(gid),
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        if let Some(error) = failure {
            // Nothing is decided until part 0 is prepared: undo the parts (a lost session's
            // are undone by the next connect's `prepared_resolve`).
            let error = session_rollback(&self.main, error).await;
            for gid in &prepared {
                let _ = self.main.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).await;
            }
            return Err(error);
        }
        // The decision: part 0 prepared last means every part is prepared, so the group commits
        // (`prepared_resolve` finishes it if this process dies from here on).
        self.main.batch_execute(&format!("PREPARE TRANSACTION '{}'", gid(0))).await?;
        for gid in &prepared {
            self.main.batch_execute(&format!("COMMIT PREPARED '{gid}'")).await?;
        }
        // The position last: a reader that sees it sees every row up to it.
        self.main.batch_execute(&format!("COMMIT PREPARED '{}'", gid(0))).await?;
        Ok(())
    }

    /// Creates the group's months' partitions that may not exist yet, each committed at once
    /// (an empty partition is harmless; the entry sessions need to see it).
    async fn partitions_create(&mut self, group: &Group) -> Result<(), HistoryError> {
        let created: Vec<i64> = group.months.difference(&self.partitions).copied().collect();
        for month in &created {
            let (name, from, to) = month_partition(*month);
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF ledger_entries FOR VALUES FROM ({from}) TO ({to})"
            );
            self.main.batch_execute(&sql).await?;
        }
        self.partitions.extend(created);
        Ok(())
    }
}

/// One month (the usual case): straight into its partition, no routing per row.
fn entries_table(group: &Group) -> String {
    match (group.months.len(), group.months.first()) {
        (1, Some(month)) => month_partition(*month).0,
        _ => COPY_ENTRIES.0.to_string(),
    }
}

fn gid_of(database_name: &str, end_op: u64, part: usize) -> String {
    // Quoted into SQL: a quote in a database name is doubled.
    format!("{GID_PREFIX}:{}:{end_op}:{part}", database_name.replace('\'', "''"))
}

/// Takes the writer lock, waiting (forever, with a bounded backoff) while another projection
/// holds it.
async fn writer_lock(client: &Client) -> Result<(), HistoryError> {
    let mut backoff = Duration::from_millis(20);
    loop {
        let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK_KEY]).await?.get(0);
        if locked {
            return Ok(());
        }
        tracing::warn!(backoff_ms = backoff.as_millis() as u64, "another projection is writing this database; waiting");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Two-phase commit needs `max_prepared_transactions` of at least one per session.
async fn prepared_capacity_check(client: &Client, writers: usize) -> Result<(), HistoryError> {
    let max: String = client.query_one("SHOW max_prepared_transactions", &[]).await?.get(0);
    let max: usize = max.parse().unwrap_or(0);
    if max < writers {
        return Err(HistoryError::Config(format!(
            "--writers {writers} commits its sessions together by two-phase commit, which needs PostgreSQL's \
             max_prepared_transactions >= {writers} (it is {max}; set it in postgresql.conf and restart), or run \
             with --writers 1"
        )));
    }
    Ok(())
}

/// Finishes what a writer that died mid-group left prepared: a group whose part 0 (the
/// position's) is prepared, or whose position is stored, is committed (part 0 is prepared only
/// after every other part and committed after them); any other is rolled back (its prepare
/// phase never completed, so nothing of it was committed). Run under the writer lock.
async fn prepared_resolve(client: &Client, database_name: &str) -> Result<(), HistoryError> {
    let prefix = format!("{GID_PREFIX}:{}:", database_name.replace('\'', "''"));
    let rows = client.query("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()", &[]).await?;
    let mut groups: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for row in &rows {
        let gid: String = row.get(0);
        let Some(rest) = gid.strip_prefix(&prefix) else { continue };
        let parsed = rest.split_once(':').and_then(|(end, part)| Some((end.parse().ok()?, part.parse().ok()?)));
        let Some((end_op, part)) = parsed else {
            return Err(HistoryError::Inconsistent {
                reason: format!("a prepared transaction {gid:?} of no known form"),
            });
        };
        groups.entry(end_op).or_default().insert(part);
    }
    if groups.is_empty() {
        return Ok(());
    }
    let (position, _) = position_read(client).await?;
    for (end_op, parts) in &groups {
        let commit = parts.contains(&0) || position.op >= *end_op;
        let verb = if commit { "COMMIT PREPARED" } else { "ROLLBACK PREPARED" };
        tracing::warn!(end_op, parts = parts.len(), verb, position = position.op, "resolving a group left prepared");
        // Part 0 last (BTreeSet order puts it first).
        for part in parts.iter().filter(|part| **part != 0).chain(parts.iter().filter(|part| **part == 0)) {
            client.batch_execute(&format!("{verb} '{}'", gid_of(database_name, *end_op, *part))).await?;
        }
    }
    Ok(())
}

/// Undoes the session's open transaction after `error` (best effort: a lost session has none).
async fn session_rollback(client: &Client, error: HistoryError) -> HistoryError {
    if !error.is_transient() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    error
}

/// The main session's part, left open (the caller commits or prepares it): the position moved
/// from the group's start to its end, then every table but the entries (and the entries too when
/// `entries` is given: the one-session writer).
async fn main_part_write(client: &Client, group: &Group, entries: Option<(&str, &Stage)>) -> Result<(), HistoryError> {
    client.batch_execute("BEGIN").await?;
    let moved = client
        .execute(
            "UPDATE projection_position SET op = $1, checksum = $2, timestamp_ns = $3, updated_at = now()
             WHERE op = $4 AND checksum = $5",
            &[
                &i64_of(group.position.op),
                &Uuid128(group.position.checksum),
                &i64_of(group.timestamp_ns),
                &i64_of(group.after.op),
                &Uuid128(group.after.checksum),
            ],
        )
        .await?;
    if moved != 1 {
        let (found, _) = position_read(client).await?;
        return Err(HistoryError::PositionConflict { expected: group.after, found });
    }
    for stage in group.stages.iter().filter(|stage| stage.rows_count > 0) {
        stage_copy(client, stage.table, stage).await?;
        stage_apply(client, group, stage).await?;
    }
    if let Some((table, stage)) = entries.filter(|(_, stage)| stage.rows_count > 0) {
        stage_copy(client, table, stage).await?;
    }
    Ok(())
}

/// One entry session's part: its key range of the entries, copied and prepared as `gid`.
async fn entry_part_prepare(client: &Client, table: &str, stage: &Stage, gid: String) -> Result<String, HistoryError> {
    let result = async {
        client.batch_execute("BEGIN").await?;
        stage_copy(client, table, stage).await?;
        client.batch_execute(&format!("PREPARE TRANSACTION '{gid}'")).await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(gid),
        Err(error) => Err(session_rollback(client, error).await),
    }
}

async fn stage_copy(client: &Client, table: &str, stage: &Stage) -> Result<(), HistoryError> {
    let sink = client.copy_in(&format!("COPY {table} FROM STDIN (FORMAT binary)")).await?;
    futures_util::pin_mut!(sink);
    sink.send(stage.bytes.clone()).await?;
    let copied = sink.finish().await?;
    assert_eq!(copied, stage.rows_count, "COPY into {table} took every row");
    Ok(())
}

/// The statements that apply a staging table's rows as updates of rows already there; each
/// must touch exactly one row per staged row. (Every other table is copied into directly.)
const APPLY_STATEMENTS: &[(&str, &str)] = &[
    (
        STAGE_ACCOUNT_UPDATES.0,
        "UPDATE accounts a SET flags = s.flags, updated_op = s.updated_op FROM stage_account_updates s WHERE a.id = s.id",
    ),
    (
        STAGE_RESOLUTIONS.0,
        "UPDATE holds h SET status = r.status, resolved_by = r.resolved_by, resolved_amount = r.resolved_amount,
             resolved_timestamp_ns = r.resolved_timestamp_ns, resolved_op = r.resolved_op
         FROM stage_resolutions r WHERE h.id = r.hold_id AND h.status = 'pending'",
    ),
    (
        STAGE_RESOLUTIONS.0,
        "UPDATE transfers t SET status = r.status FROM stage_resolutions r WHERE t.id = r.hold_id AND t.status = 'pending'",
    ),
];

/// Applies a staging table's rows, then empties it (in the same transaction, so it is empty
/// at every commit).
async fn stage_apply(client: &Client, group: &Group, stage: &Stage) -> Result<(), HistoryError> {
    let statements: Vec<&str> =
        APPLY_STATEMENTS.iter().filter(|(table, _)| *table == stage.table).map(|(_, sql)| *sql).collect();
    for sql in &statements {
        let count = client.execute(*sql, &[]).await?;
        if count != stage.rows_count {
            return Err(HistoryError::Inconsistent {
                reason: format!(
                    "ops {}..={}: {sql:?} touched {count} rows for {} staged (a hold or account the journal \
                     resolves is missing or already resolved in PostgreSQL)",
                    group.after.op + 1,
                    group.position.op,
                    stage.rows_count
                ),
            });
        }
    }
    if !statements.is_empty() {
        client.batch_execute(&format!("TRUNCATE {}", stage.table)).await?;
    }
    Ok(())
}

/// The stored position and the timestamp of its op.
pub async fn position_read(client: &impl tokio_postgres::GenericClient) -> Result<(Position, u64), HistoryError> {
    let row = client.query_one("SELECT op, checksum, timestamp_ns FROM projection_position", &[]).await?;
    let (op, checksum, timestamp_ns): (i64, Uuid128, i64) = (row.get(0), row.get(1), row.get(2));
    Ok((Position { op: op as u64, checksum: checksum.0 }, timestamp_ns as u64))
}
