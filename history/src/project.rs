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
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};
use walletd_replay::{FollowOptions, Follower, Position};

const STAGING_SQL: &str = include_str!("../sql/staging.sql");

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
    let mut writer = Writer::connect_retrying(&options.database, &metrics).await?;
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
        if let Err(error) = writer.group_write_retrying(&group, &options.database, &metrics).await {
            break Err(error);
        }
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
            if sender.blocking_send(Message::Group(builder.finish())).is_err() {
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

/// The writer's own session (its staging tables are session-local).
struct Writer {
    client: Client,
    /// Months whose partition is known to exist.
    partitions: BTreeSet<i64>,
}

impl Writer {
    async fn connect(database: &tokio_postgres::Config) -> Result<Writer, HistoryError> {
        let (mut client, connection) = database.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "the projection's PostgreSQL connection ended");
            }
        });
        crate::schema::migrate(&mut client).await?;
        client.batch_execute(STAGING_SQL).await?;
        Ok(Writer { client, partitions: BTreeSet::new() })
    }

    /// Connects, waiting out a database that is down (bounded backoff, forever).
    async fn connect_retrying(
        database: &tokio_postgres::Config,
        metrics: &ProjectionMetrics,
    ) -> Result<Writer, HistoryError> {
        let mut backoff = Duration::from_millis(20);
        loop {
            match Writer::connect(database).await {
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
        position_read(&self.client).await
    }

    /// Writes `group`, reconnecting and retrying while PostgreSQL is away. After a reconnect
    /// the stored position says whether the lost transaction committed.
    async fn group_write_retrying(
        &mut self,
        group: &Group,
        database: &tokio_postgres::Config,
        metrics: &ProjectionMetrics,
    ) -> Result<(), HistoryError> {
        loop {
            let error = match self.group_write(group).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_transient() => error,
                Err(error) => return Err(error),
            };
            tracing::warn!(%error, op = group.position.op, "writing a group failed; reconnecting");
            *self = Writer::connect_retrying(database, metrics).await?;
            metrics.reconnected();
            let (found, _) = self.position().await?;
            if found == group.position {
                return Ok(());
            }
            if found != group.after {
                return Err(HistoryError::PositionConflict { expected: group.after, found });
            }
        }
    }

    async fn group_write(&mut self, group: &Group) -> Result<(), HistoryError> {
        let transaction = self.client.transaction().await?;
        let moved = transaction
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
            let (found, _) = position_read(&transaction).await?;
            return Err(HistoryError::PositionConflict { expected: group.after, found });
        }
        let created: Vec<i64> = group.months.difference(&self.partitions).copied().collect();
        for month in &created {
            let (name, from, to) = month_partition(*month);
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF ledger_entries FOR VALUES FROM ({from}) TO ({to})"
            );
            transaction.batch_execute(&sql).await?;
        }
        // One month (the usual case): straight into its partition, no routing per row.
        let entries_table = match (group.months.len(), group.months.first()) {
            (1, Some(month)) => month_partition(*month).0,
            _ => COPY_ENTRIES.0.to_string(),
        };
        for stage in group.stages.iter().filter(|stage| stage.rows_count > 0) {
            let table = if stage.table == COPY_ENTRIES.0 { entries_table.as_str() } else { stage.table };
            stage_copy(&transaction, table, stage).await?;
            stage_apply(&transaction, group, stage).await?;
        }
        transaction.commit().await?;
        self.partitions.extend(created);
        Ok(())
    }
}

async fn stage_copy(
    transaction: &tokio_postgres::Transaction<'_>,
    table: &str,
    stage: &Stage,
) -> Result<(), HistoryError> {
    let sink = transaction.copy_in(&format!("COPY {table} FROM STDIN (FORMAT binary)")).await?;
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

async fn stage_apply(
    transaction: &tokio_postgres::Transaction<'_>,
    group: &Group,
    stage: &Stage,
) -> Result<(), HistoryError> {
    for (_, sql) in APPLY_STATEMENTS.iter().filter(|(table, _)| *table == stage.table) {
        let count = transaction.execute(*sql, &[]).await?;
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
    Ok(())
}

/// The stored position and the timestamp of its op.
pub async fn position_read(client: &impl tokio_postgres::GenericClient) -> Result<(Position, u64), HistoryError> {
    let row = client.query_one("SELECT op, checksum, timestamp_ns FROM projection_position", &[]).await?;
    let (op, checksum, timestamp_ns): (i64, Uuid128, i64) = (row.get(0), row.get(1), row.get(2));
    Ok((Position { op: op as u64, checksum: checksum.0 }, timestamp_ns as u64))
}
