//! Reconciliation (`walletd reconcile`): proves at one op that PostgreSQL, the engine's state
//! and the journal agree, while the engine and the projection keep writing.
//!
//! 1. In one read-only REPEATABLE READ transaction (one snapshot, so the projection committing
//!    meanwhile changes nothing we read), read PostgreSQL's position `P = (op, checksum)` and
//!    everything compared below. `--at-op` picks an earlier op: then `P` is that op with the
//!    checksum `journal_ops` recorded for it, and PostgreSQL's side is its rows with `op <= P.op`.
//! 2. The engine's state at exactly `P.op`: a follower opened at `P` on the data directory
//!    (newest snapshot at or before it, then the journal up to it, every checkpoint's state hash
//!    verified on the way). Opening refuses if the journal's record at `P.op` has another chain
//!    checksum than the one PostgreSQL stored: that is the journal check.
//! 3. Compare, and name the first difference:
//!    - `journal_ops` holds ops 1..=P.op with no gap, and its checksum at P.op is the position's;
//!    - every account: the engine's posted balances = the last entry's after-image = Σ of its
//!      entries (debit side = debits_posted, credit side = credits_posted); the engine's pending
//!      balances = Σ of its open holds; the account rows = the engine's account count;
//!    - per ledger: Σ debit entries = Σ credit entries in PostgreSQL, and both = the engine's
//!      running totals of posted debits and credits;
//!    - the transfer count = the engine's transfers ever created.

use crate::error::HistoryError;
use crate::pgtypes::Uuid128;
use crate::project::position_read;
use crate::query::amount;
use std::collections::BTreeMap;
use tokio_postgres::NoTls;
use walletd_core::{AccountId, Output, Query};
use walletd_replay::{FollowOptions, Follower, Position};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub op: u64,
    pub checksum: String,
    pub ok: bool,
    pub accounts_compared: u64,
    pub checks: Vec<Check>,
    /// The first account whose balances differ, with what each side says.
    pub first_difference: Option<String>,
}

/// Per account, what PostgreSQL says.
#[derive(Clone, Copy, Debug, Default)]
struct PgAccount {
    in_accounts: bool,
    /// The last entry's after-image (debits_posted, credits_posted), if any entry.
    last: Option<(u128, u128)>,
    debit_sum: u128,
    credit_sum: u128,
    pending_debit: u128,
    pending_credit: u128,
}

/// Everything read in PostgreSQL's one snapshot.
struct PgState {
    position: Position,
    ops_count: u64,
    ops_max: u64,
    ops_checksum_at_position: Option<u128>,
    accounts: BTreeMap<u128, PgAccount>,
    accounts_rows: u64,
    transfers_count: u64,
    /// ledger → (Σ debit entries, Σ credit entries).
    ledgers: BTreeMap<u32, (u128, u128)>,
}

/// Reconciles at PostgreSQL's position.
pub fn reconcile(data_dir: &std::path::Path, database: &tokio_postgres::Config) -> Result<Report, HistoryError> {
    reconcile_at(data_dir, database, None)
}

/// Reconciles at `at_op` (at most PostgreSQL's position; None: at the position). PostgreSQL's
/// side of an earlier op is its rows with `op <= at_op` (holds still open then: placed at or
/// before it and resolved after it, or not yet).
pub fn reconcile_at(
    data_dir: &std::path::Path,
    database: &tokio_postgres::Config,
    at_op: Option<u64>,
) -> Result<Report, HistoryError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let state = runtime.block_on(pg_read(database, at_op))?;
    Ok(compare(data_dir, &state))
}

async fn pg_read(database: &tokio_postgres::Config, at_op: Option<u64>) -> Result<PgState, HistoryError> {
    let (mut client, connection) = database.connect(NoTls).await?;
    tokio::spawn(connection);
    crate::schema::schema_check(&client).await?;
    let transaction = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let (stored, _) = position_read(&transaction).await?;
    let at = match at_op {
        None => stored.op,
        Some(op) if op <= stored.op => op,
        Some(op) => {
            return Err(HistoryError::Config(format!(
                "PostgreSQL's history has reached op {} only; reconcile at an op at or before it (not {op})",
                stored.op
            )))
        }
    };
    let at_sql = at as i64;
    let ops = transaction
        .query_one("SELECT count(*), coalesce(max(op), 0) FROM journal_ops WHERE op <= $1", &[&at_sql])
        .await?;
    let checksum_at = transaction
        .query_opt("SELECT checksum FROM journal_ops WHERE op = $1", &[&at_sql])
        .await?
        .map(|row| row.get::<_, Uuid128>(0).0);
    // At the stored position the position row is the reference; at an earlier op, the op's row.
    let position = match at_op {
        Some(_) if at < stored.op => Position { op: at, checksum: checksum_at.unwrap_or_default() },
        _ => stored,
    };
    let mut accounts: BTreeMap<u128, PgAccount> = BTreeMap::new();
    for row in transaction.query("SELECT id FROM accounts WHERE created_op <= $1", &[&at_sql]).await? {
        accounts.entry(row.get::<_, Uuid128>(0).0).or_default().in_accounts = true;
    }
    let last = "SELECT DISTINCT ON (account_id) account_id, debits_posted::text, credits_posted::text
                FROM ledger_entries WHERE op <= $1 ORDER BY account_id, timestamp_ns DESC";
    for row in transaction.query(last, &[&at_sql]).await? {
        accounts.entry(row.get::<_, Uuid128>(0).0).or_default().last = Some((amount(&row, 1), amount(&row, 2)));
    }
    let sums = "SELECT account_id, coalesce(sum(amount) FILTER (WHERE side = 'D'), 0)::text,
                       coalesce(sum(amount) FILTER (WHERE side = 'C'), 0)::text
                FROM ledger_entries WHERE op <= $1 GROUP BY account_id";
    for row in transaction.query(sums, &[&at_sql]).await? {
        let account = accounts.entry(row.get::<_, Uuid128>(0).0).or_default();
        (account.debit_sum, account.credit_sum) = (amount(&row, 1), amount(&row, 2));
    }
    let holds = "SELECT debit_account_id, credit_account_id, amount::text FROM holds
                 WHERE op <= $1 AND (resolved_op IS NULL OR resolved_op > $1)";
    for row in transaction.query(holds, &[&at_sql]).await? {
        let hold_amount = amount(&row, 2);
        accounts.entry(row.get::<_, Uuid128>(0).0).or_default().pending_debit += hold_amount;
        accounts.entry(row.get::<_, Uuid128>(1).0).or_default().pending_credit += hold_amount;
    }
    let mut ledgers = BTreeMap::new();
    let per_ledger = "SELECT ledger, coalesce(sum(amount) FILTER (WHERE side = 'D'), 0)::text,
                             coalesce(sum(amount) FILTER (WHERE side = 'C'), 0)::text
                      FROM ledger_entries WHERE op <= $1 GROUP BY ledger";
    for row in transaction.query(per_ledger, &[&at_sql]).await? {
        ledgers.insert(row.get::<_, i64>(0) as u32, (amount(&row, 1), amount(&row, 2)));
    }
    let count = "SELECT count(*) FROM accounts WHERE created_op <= $1";
    let accounts_rows: i64 = transaction.query_one(count, &[&at_sql]).await?.get(0);
    let count = "SELECT count(*) FROM transfers WHERE op <= $1";
    let transfers_count: i64 = transaction.query_one(count, &[&at_sql]).await?.get(0);
    transaction.commit().await?;
    Ok(PgState {
        position,
        ops_count: ops.get::<_, i64>(0) as u64,
        ops_max: ops.get::<_, i64>(1) as u64,
        ops_checksum_at_position: checksum_at,
        accounts,
        accounts_rows: accounts_rows as u64,
        transfers_count: transfers_count as u64,
        ledgers,
    })
}

fn compare(data_dir: &std::path::Path, state: &PgState) -> Report {
    let mut report = Report {
        op: state.position.op,
        checksum: format!("{:032x}", state.position.checksum),
        ok: true,
        accounts_compared: 0,
        checks: Vec::new(),
        first_difference: None,
    };
    let ops_ok = state.ops_count == state.position.op
        && state.ops_max == state.position.op
        && (state.position.op == 0 || state.ops_checksum_at_position == Some(state.position.checksum));
    report.check(
        "journal_ops",
        ops_ok,
        format!(
            "{} ops recorded, the newest {}, checksum there {}; the position is {}",
            state.ops_count,
            state.ops_max,
            state.ops_checksum_at_position.map_or("none".into(), |checksum| format!("{checksum:032x}")),
            state.position
        ),
    );
    let follower = match Follower::open(data_dir, Some(state.position), FollowOptions::default()) {
        Ok(follower) => follower,
        Err(error) => {
            report.check("journal", false, format!("the journal at PostgreSQL's position {}: {error}", state.position));
            return report;
        }
    };
    report.check("journal", true, format!("the journal's record at op {} has the stored checksum", state.position.op));
    accounts_compare(&mut report, follower.ledger(), state);
    ledgers_compare(&mut report, follower.ledger(), state);
    let created = follower.ledger().transfers_created();
    report.check(
        "transfers",
        created == state.transfers_count,
        format!("PostgreSQL holds {} transfers, the engine created {created}", state.transfers_count),
    );
    report
}

impl Report {
    fn check(&mut self, name: &'static str, ok: bool, detail: String) {
        self.ok &= ok;
        self.checks.push(Check { name, ok, detail });
    }
}

fn accounts_compare(report: &mut Report, ledger: &walletd_core::Ledger, state: &PgState) {
    let ids: Vec<AccountId> = state.accounts.keys().map(|id| AccountId(*id)).collect();
    let mut output = Output::new(ledger.config());
    let mut engine = BTreeMap::new();
    for chunk in ids.chunks(ledger.config().batch_events_max as usize) {
        ledger.query(Query::LookupAccounts(chunk), &mut output);
        engine.extend(output.accounts.iter().map(|account| (account.id.0, *account)));
    }
    let mut differing = 0u64;
    for (id, pg) in &state.accounts {
        report.accounts_compared += 1;
        let difference = match engine.get(id) {
            None => Some("PostgreSQL has it, the engine does not".to_string()),
            Some(account) => account_difference(account, pg),
        };
        if let Some(difference) = difference {
            differing += 1;
            if report.first_difference.is_none() {
                report.first_difference = Some(format!("account {}: {difference}", Uuid128(*id)));
            }
        }
    }
    let detail = match &report.first_difference {
        Some(first) => format!("{differing} of {} accounts differ; the first is {first}", state.accounts.len()),
        None => format!("{} accounts: balances, last entries, Σ entries and open holds agree", state.accounts.len()),
    };
    report.check("accounts", differing == 0, detail);
    let engine_count = u64::from(ledger.accounts_count());
    report.check(
        "account_rows",
        engine_count == state.accounts_rows,
        format!("PostgreSQL holds {} account rows, the engine {engine_count} accounts", state.accounts_rows),
    );
}

fn account_difference(account: &walletd_core::Account, pg: &PgAccount) -> Option<String> {
    let (debits_posted, credits_posted) = (account.debits_posted.0, account.credits_posted.0);
    if !pg.in_accounts {
        return Some("it has entries or holds but no row in accounts".into());
    }
    let last = pg.last.unwrap_or((0, 0));
    if last != (debits_posted, credits_posted) {
        return Some(format!(
            "the engine has debits_posted {debits_posted}, credits_posted {credits_posted}; the last entry says {}, {}",
            last.0, last.1
        ));
    }
    if (pg.debit_sum, pg.credit_sum) != (debits_posted, credits_posted) {
        return Some(format!(
            "the engine has debits_posted {debits_posted}, credits_posted {credits_posted}; Σ entries is {} debit, {} credit",
            pg.debit_sum, pg.credit_sum
        ));
    }
    if (pg.pending_debit, pg.pending_credit) != (account.debits_pending.0, account.credits_pending.0) {
        return Some(format!(
            "the engine has debits_pending {}, credits_pending {}; open holds sum to {} debit, {} credit",
            account.debits_pending.0, account.credits_pending.0, pg.pending_debit, pg.pending_credit
        ));
    }
    None
}

fn ledgers_compare(report: &mut Report, ledger: &walletd_core::Ledger, state: &PgState) {
    let mut problems = Vec::new();
    for (code, (debits, credits)) in &state.ledgers {
        if debits != credits {
            problems.push(format!("ledger {code}: Σ debit entries {debits} ≠ Σ credit entries {credits}"));
        }
    }
    for totals in ledger.ledger_totals() {
        let (debits, credits) = state.ledgers.get(&totals.ledger).copied().unwrap_or((0, 0));
        if (debits, credits) != (totals.debits_posted, totals.credits_posted) {
            problems.push(format!(
                "ledger {}: the engine posted {} debits and {} credits, PostgreSQL's entries sum to {debits} and {credits}",
                totals.ledger, totals.debits_posted, totals.credits_posted
            ));
        }
    }
    let detail = if problems.is_empty() {
        format!("{} ledgers: Σ debits = Σ credits = the engine's totals", state.ledgers.len())
    } else {
        problems.join("; ")
    };
    report.check("ledgers", problems.is_empty(), detail);
}
