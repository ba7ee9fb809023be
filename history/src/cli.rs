//! The command line of the history: `walletd project postgres`, `walletd history …` and
//! `walletd reconcile`. Parses, calls one library function, prints; the root binary only
//! dispatches here.

use crate::error::HistoryError;
use crate::metrics::ProjectionMetrics;
use crate::pgtypes::Uuid128;
use crate::project::{project, ProjectOptions};
use crate::query::{Applied, Cursor, Entry, History};
use crate::reconcile::{reconcile, Report};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct ProjectArgs {
    /// The node's data directory (read-only: the projection follows its durable journal).
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// PostgreSQL, as a libpq connection string or URL ("host=… port=… user=… dbname=…").
    #[arg(long)]
    pub database_url: String,
    /// Stop once caught up with the durable journal, instead of following it.
    #[arg(long)]
    pub until_caught_up: bool,
    /// Serve Prometheus metrics (GET /metrics) here.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Print `projected <op>` after every commit.
    #[arg(long)]
    pub print_progress: bool,
    /// Rows per transaction (transfers + entries + ops) before a group is committed.
    #[arg(long, default_value_t = 250_000)]
    pub group_rows: u64,
    /// PostgreSQL sessions writing each group side by side: 1 is one transaction; N > 1 copies
    /// the entries in N − 1 sessions of their own and commits the N together by two-phase commit
    /// (PostgreSQL needs max_prepared_transactions >= N).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub writers: u16,
}

#[derive(Args)]
pub struct HistoryArgs {
    /// PostgreSQL, as a libpq connection string or URL.
    #[arg(long)]
    pub database_url: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: HistoryCommand,
}

#[derive(Subcommand)]
pub enum HistoryCommand {
    /// A wallet's transactions (its ledger entries), newest first, one page.
    Transactions {
        /// The account id: decimal, 0x-hex, or a uuid.
        account: String,
        /// The `next` cursor a previous page printed.
        #[arg(long)]
        cursor: Option<Cursor>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One transfer by id, any age.
    Transfer { id: String },
    /// Opening balance, entries and closing balance of [FROM, TO).
    Statement {
        account: String,
        /// A UTC date (YYYY-MM-DD) or nanoseconds since the epoch.
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Balances after the last entry at or before a time.
    Balance {
        account: String,
        /// A UTC date (YYYY-MM-DD, its midnight) or nanoseconds since the epoch.
        #[arg(long)]
        at: String,
    },
    /// Whether a transfer id was applied, for a retry the engine refused as too old.
    Applied {
        id: String,
        /// An op at which the engine already refused it (its op_durable then).
        #[arg(long)]
        as_of_op: u64,
    },
}

#[derive(Args)]
pub struct ReconcileArgs {
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub database_url: String,
    #[arg(long)]
    pub json: bool,
    /// Compare at this op (at most PostgreSQL's position) instead of at PostgreSQL's position.
    #[arg(long, conflicts_with = "every_s")]
    pub at_op: Option<u64>,
    /// Run every this many seconds (forever) instead of once, exporting the result as metrics.
    #[arg(long)]
    pub every_s: Option<u64>,
    /// With --every-s: serve Prometheus metrics (walletd_reconcile_mismatch) here.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

fn database(url: &str) -> Result<tokio_postgres::Config, HistoryError> {
    url.parse().map_err(|error| HistoryError::Config(format!("--database-url {url:?}: {error}")))
}

pub fn project_command(args: ProjectArgs) -> Result<(), HistoryError> {
    let mut options = ProjectOptions::new(args.data_dir, database(&args.database_url)?);
    options.until_caught_up = args.until_caught_up;
    options.metrics_addr = args.metrics_addr;
    options.print_progress = args.print_progress;
    options.group_rows_max = args.group_rows.max(1);
    options.writers = usize::from(args.writers);
    let report = project(&options)?;
    println!(
        "projected     ops {}..={} ({} ops, {} transfers, {} entries, {} transactions, {} reconnects)",
        report.position_start + 1,
        report.position,
        report.ops,
        report.transfers,
        report.entries,
        report.groups,
        report.reconnects
    );
    println!(
        "time          {:.3} s, {:.0} transfers/s, {:.0} entries/s",
        report.seconds,
        report.transfers as f64 / report.seconds.max(1e-9),
        report.entries as f64 / report.seconds.max(1e-9)
    );
    Ok(())
}

/// An id as decimal, 0x-hex, or a uuid (hyphens optional).
pub fn id_parse(text: &str) -> Result<u128, HistoryError> {
    let bad = || HistoryError::Config(format!("{text:?} is not an id (decimal, 0x-hex or a uuid)"));
    if let Some(hex) = text.strip_prefix("0x") {
        return u128::from_str_radix(hex, 16).map_err(|_| bad());
    }
    if text.contains('-') {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        return if hex.len() == 32 { u128::from_str_radix(&hex, 16).map_err(|_| bad()) } else { Err(bad()) };
    }
    text.parse().map_err(|_| bad())
}

/// A time as nanoseconds since the epoch, or a UTC date (its midnight).
pub fn time_parse(text: &str) -> Result<u64, HistoryError> {
    if let Ok(ns) = text.parse::<u64>() {
        return Ok(ns);
    }
    let bad = || HistoryError::Config(format!("{text:?} is not a time (YYYY-MM-DD or nanoseconds)"));
    let parts: Vec<&str> = text.split('-').collect();
    let [year, month, day] = parts[..] else { return Err(bad()) };
    let (year, month, day): (i64, u32, u32) =
        (year.parse().map_err(|_| bad())?, month.parse().map_err(|_| bad())?, day.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year < 1970 {
        return Err(bad());
    }
    Ok((crate::rows::days_from_civil(year, month, day) * crate::rows::NS_PER_DAY) as u64)
}

pub fn history_command(args: HistoryArgs) -> Result<(), HistoryError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let history = History::new(database(&args.database_url)?, 2)?;
    runtime.block_on(async {
        history.schema_check().await?;
        let json = args.json;
        match args.command {
            HistoryCommand::Transactions { account, cursor, limit } => {
                let page = history.transactions(id_parse(&account)?, cursor, limit.clamp(1, 10_000)).await?;
                if json {
                    return print_json(&page);
                }
                println!("position      op {}", page.position);
                page.entries.iter().for_each(entry_print);
                match page.next {
                    Some(next) => println!("next          --cursor {next}"),
                    None => println!("next          (none: the oldest entry is above)"),
                }
            }
            HistoryCommand::Transfer { id } => match history.transfer(id_parse(&id)?).await? {
                Some(transfer) if json => return print_json(&transfer),
                Some(transfer) => println!("{transfer:#?}"),
                None => return Err(HistoryError::Config(format!("transfer {id} is not in the history"))),
            },
            HistoryCommand::Statement { account, from, to } => {
                let statement = history.statement(id_parse(&account)?, time_parse(&from)?, time_parse(&to)?).await?;
                if json {
                    return print_json(&statement);
                }
                println!("position      op {}", statement.position);
                println!("opening       {} (posted, credits − debits)", statement.opening.posted());
                statement.entries.iter().for_each(entry_print);
                println!("closing       {} after {} entries", statement.closing.posted(), statement.entries.len());
            }
            HistoryCommand::Balance { account, at } => {
                let (balances, position) = history.balance_at(id_parse(&account)?, time_parse(&at)?).await?;
                if json {
                    return print_json(&balances);
                }
                println!("position      op {position}");
                println!("balance       {} (posted, credits − debits)", balances.posted());
                println!("{balances:?}");
            }
            HistoryCommand::Applied { id, as_of_op } => {
                let applied = history.transfer_applied(id_parse(&id)?, as_of_op).await?;
                if json {
                    return print_json(&applied);
                }
                match applied {
                    Applied::Yes(transfer) => {
                        println!("applied       at op {}, status {}", transfer.op, transfer.status)
                    }
                    Applied::No { position } => {
                        println!("not applied   (the history is at op {position} ≥ {as_of_op})")
                    }
                    Applied::Behind { position, as_of_op } => {
                        println!("unknown       the history is at op {position}, behind op {as_of_op}: ask again later")
                    }
                }
            }
        }
        Ok(())
    })
}

fn print_json(value: &impl serde::Serialize) -> Result<(), HistoryError> {
    println!("{}", serde_json::to_string(value).expect("serialises"));
    Ok(())
}

fn entry_print(entry: &Entry) {
    println!(
        "{} {} {:>12} {} with {} balance {} (op {})",
        entry.timestamp_ns,
        Uuid128(entry.transfer_id),
        entry.signed_amount(),
        entry.side,
        Uuid128(entry.counterparty_id),
        entry.after.posted(),
        entry.op
    );
}

/// Runs reconciliation once (or forever with --every-s); true when everything agreed.
pub fn reconcile_command(args: ReconcileArgs) -> Result<bool, HistoryError> {
    let database = database(&args.database_url)?;
    let Some(every_s) = args.every_s else {
        let report = crate::reconcile::reconcile_at(&args.data_dir, &database, args.at_op)?;
        report_print(&report, args.json);
        return Ok(report.ok);
    };
    let metrics = Arc::new(ProjectionMetrics::default());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    if let Some(addr) = args.metrics_addr {
        let bound = runtime.block_on(crate::metrics::metrics_serve(addr, Arc::clone(&metrics)))?;
        println!("metrics on http://{bound}/metrics");
    }
    loop {
        match reconcile(&args.data_dir, &database) {
            Ok(report) => {
                metrics.reconciled(report.op, !report.ok);
                report_print(&report, args.json);
            }
            Err(error) => tracing::warn!(%error, "reconciliation could not run; trying again"),
        }
        std::thread::sleep(std::time::Duration::from_secs(every_s.max(1)));
    }
}

fn report_print(report: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).expect("serialises"));
        return;
    }
    println!("reconciled    at op {} (checksum {})", report.op, report.checksum);
    for check in &report.checks {
        println!("{:<13} {} {}", check.name, if check.ok { "ok  " } else { "FAIL" }, check.detail);
    }
    match &report.first_difference {
        Some(first) => println!("first         {first}"),
        None if report.ok => println!("result        PostgreSQL, the engine and the journal agree"),
        None => println!("result        DIFFERENT (see the failed checks)"),
    }
}
