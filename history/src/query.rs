//! What the history holds, read through a bounded connection pool (deadpool-postgres), so that
//! many concurrent readers (the HTTP gateway's handlers, `walletd history`) share a few
//! sessions and a reader never opens a connection per request.
//!
//! Every answer comes with the projection's position, because the history is eventually
//! consistent with the engine: it knows everything up to that op and nothing after it.
//!
//! - `transactions`: a wallet's ledger entries, newest first, cursor-paged by
//!   `(timestamp_ns, transfer_id)`. New transfers only ever arrive newer than the first page, so
//!   walking the pages while transfers arrive skips and repeats nothing.
//! - `transfer`: one transfer by id, any age, with its status (a hold's resolution included).
//! - `statement`: opening balance, the entries of `[from, to)` and the closing balance.
//! - `balance_at`: the posted balances after the last entry at or before a time.
//! - `transfer_applied`: whether an id the engine can no longer check (refused as too old for
//!   its window) was applied, or that the projection is too far behind to say.

use crate::error::HistoryError;
use crate::pgtypes::{i64_of, Uuid128};
use crate::project::position_read;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};
use walletd_replay::Position;

/// Balances after an entry (or zero before any). Amounts in minor units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Balances {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
}

impl Balances {
    /// credits_posted − debits_posted: a wallet's (credit-normal) posted balance.
    pub fn posted(&self) -> i128 {
        self.credits_posted as i128 - self.debits_posted as i128
    }
}

/// One side of a double entry, as a wallet's statement line.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub timestamp_ns: u64,
    pub transfer_id: u128,
    /// 'D' (the account was debited) or 'C' (credited).
    pub side: char,
    pub counterparty_id: u128,
    pub ledger: u32,
    pub amount: u128,
    pub op: u64,
    /// The account's balances right after this entry.
    pub after: Balances,
}

impl Entry {
    /// The entry's effect on a credit-normal (wallet) balance.
    pub fn signed_amount(&self) -> i128 {
        if self.side == 'C' {
            self.amount as i128
        } else {
            -(self.amount as i128)
        }
    }
}

/// Where the next (older) page starts: after this `(timestamp_ns, transfer_id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cursor {
    pub timestamp_ns: u64,
    pub transfer_id: u128,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{:032x}", self.timestamp_ns, self.transfer_id)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Cursor, String> {
        let (timestamp, id) = text.split_once(':').ok_or("expected TIMESTAMP_NS:TRANSFER_ID (hex)")?;
        let timestamp_ns = timestamp.parse().map_err(|_| format!("{timestamp:?} is not a timestamp"))?;
        let transfer_id = u128::from_str_radix(id, 16).map_err(|_| format!("{id:?} is not a hex id"))?;
        Ok(Cursor { timestamp_ns, transfer_id })
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Page {
    pub position: u64,
    /// The engine's timestamp of the op at `position` (0 before the first op).
    pub position_timestamp_ns: u64,
    pub entries: Vec<Entry>,
    /// Pass back for the next (older) page; None when this was the oldest.
    pub next: Option<Cursor>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TransferView {
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    pub amount: u128,
    pub pending_id: Option<u128>,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    pub timeout_s: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: u16,
    pub timestamp_ns: u64,
    pub op: u64,
    /// 'posted', 'voided', 'pending', 'pending_posted', 'pending_voided', 'pending_expired'.
    pub status: String,
    /// For a resolved hold: the transfer that posted or voided it (None for an expiry).
    pub resolved_by: Option<u128>,
    pub resolved_timestamp_ns: Option<u64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Statement {
    pub position: u64,
    pub account_id: u128,
    pub from_ns: u64,
    pub to_ns: u64,
    pub opening: Balances,
    pub entries: Vec<Entry>,
    pub closing: Balances,
}

/// The answer to "was this transfer id applied?".
#[derive(Clone, Debug, serde::Serialize)]
pub enum Applied {
    /// It was: the original transfer and what became of it.
    Yes(Box<TransferView>),
    /// It was not, as of `position`, which covers the op asked about.
    No { position: u64 },
    /// The projection has not reached `as_of_op` yet: ask again later.
    Behind { position: u64, as_of_op: u64 },
}

/// The history's readers.
#[derive(Clone)]
pub struct History {
    pool: Pool,
}

const ENTRY_COLUMNS: &str = "timestamp_ns, transfer_id, side, counterparty_id, ledger, amount::text, op,
    debits_pending::text, debits_posted::text, credits_pending::text, credits_posted::text";
const ENTRY_COLUMNS_COUNT: usize = 11;

/// A page and the position in one statement. `(account_id, timestamp_ns)` is the entries' key,
/// so `timestamp_ns` alone orders an account's entries totally: the index is read backward and
/// nothing is sorted (the cursor's `transfer_id` only breaks ties that cannot occur).
fn page_sql() -> String {
    format!(
        "SELECT e.*, p.op, p.timestamp_ns FROM projection_position p LEFT JOIN LATERAL (
             SELECT {ENTRY_COLUMNS} FROM ledger_entries
             WHERE account_id = $1 AND timestamp_ns <= $2 AND (timestamp_ns, transfer_id) < ($2, $3) AND op <= p.op
             ORDER BY timestamp_ns DESC LIMIT $4) e ON true
         ORDER BY e.timestamp_ns DESC"
    )
}

impl History {
    /// A pool of at most `connections_max` sessions to `database` (connections open lazily).
    pub fn new(database: tokio_postgres::Config, connections_max: usize) -> Result<History, HistoryError> {
        let manager = Manager::from_config(database, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(connections_max.max(1))
            .build()
            .map_err(|error| HistoryError::Pool(error.to_string()))?;
        Ok(History { pool })
    }

    /// `new` from a libpq connection string or URL (`--history-url`, `--database-url`).
    pub fn from_url(url: &str, connections_max: usize) -> Result<History, HistoryError> {
        let database: tokio_postgres::Config =
            url.parse().map_err(|error| HistoryError::Config(format!("the PostgreSQL URL does not parse: {error}")))?;
        History::new(database, connections_max)
    }

    /// Checks that the database holds a schema this walletd reads.
    pub async fn schema_check(&self) -> Result<(), HistoryError> {
        let client = self.pool.get().await?;
        crate::schema::schema_check(&client).await
    }

    /// The projection's position and its op's engine timestamp.
    pub async fn position(&self) -> Result<(Position, u64), HistoryError> {
        let client = self.pool.get().await?;
        let client: &tokio_postgres::Client = &client;
        position_read(client).await
    }

    /// A wallet's entries, newest first, `limit` per page, starting after `cursor`.
    ///
    /// One prepared statement, one round trip: the position and the page are read by the same
    /// statement, so from one snapshot (as a transaction would give, without its three more
    /// round trips, each of which waits for the scheduler on a busy machine).
    pub async fn transactions(
        &self,
        account_id: u128,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page, HistoryError> {
        assert!(limit > 0);
        let client = self.pool.get().await?;
        let (timestamp_ns, transfer_id) = cursor.map_or((i64::MAX, Uuid128(u128::MAX)), |cursor| {
            (i64_of(cursor.timestamp_ns), Uuid128(cursor.transfer_id))
        });
        let statement = client.prepare_cached(&page_sql()).await?;
        let rows =
            client.query(&statement, &[&Uuid128(account_id), &timestamp_ns, &transfer_id, &i64::from(limit)]).await?;
        let first = rows.first().expect("the position row is always there (a LEFT JOIN)");
        let position: i64 = first.get(ENTRY_COLUMNS_COUNT);
        let position_timestamp_ns: i64 = first.get(ENTRY_COLUMNS_COUNT + 1);
        let entries: Vec<Entry> =
            rows.iter().filter(|row| row.get::<_, Option<i64>>(0).is_some()).map(entry_of).collect();
        assert!(entries.len() <= limit as usize, "the page's LIMIT");
        let next = (entries.len() == limit as usize).then(|| {
            let last = entries.last().expect("a full page");
            Cursor { timestamp_ns: last.timestamp_ns, transfer_id: last.transfer_id }
        });
        Ok(Page { position: position as u64, position_timestamp_ns: position_timestamp_ns as u64, entries, next })
    }

    /// One transfer by id, any age.
    pub async fn transfer(&self, id: u128) -> Result<Option<TransferView>, HistoryError> {
        let client = self.pool.get().await?;
        let client: &tokio_postgres::Client = &client;
        transfer_read(client, id).await
    }

    /// A statement of `[from_ns, to_ns)`: the balances before it, its entries oldest first,
    /// and the balances after its last entry.
    pub async fn statement(&self, account_id: u128, from_ns: u64, to_ns: u64) -> Result<Statement, HistoryError> {
        assert!(from_ns <= to_ns);
        let mut client = self.pool.get().await?;
        let transaction = reading(&mut client).await?;
        let (position, _) = position_read(&transaction).await?;
        let opening = balances_before(&transaction, account_id, from_ns, position.op).await?;
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM ledger_entries
             WHERE account_id = $1 AND timestamp_ns >= $2 AND timestamp_ns < $3 AND op <= $4 ORDER BY timestamp_ns"
        );
        let rows = transaction
            .query(&sql, &[&Uuid128(account_id), &i64_of(from_ns), &i64_of(to_ns), &i64_of(position.op)])
            .await?;
        transaction.commit().await?;
        let entries: Vec<Entry> = rows.iter().map(entry_of).collect();
        let closing = entries.last().map_or(opening, |entry| entry.after);
        Ok(Statement { position: position.op, account_id, from_ns, to_ns, opening, entries, closing })
    }

    /// The balances after the last entry at or before `at_ns` (zero before any), and the
    /// position they are read at.
    pub async fn balance_at(&self, account_id: u128, at_ns: u64) -> Result<(Balances, u64), HistoryError> {
        let mut client = self.pool.get().await?;
        let transaction = reading(&mut client).await?;
        let (position, _) = position_read(&transaction).await?;
        let balances = balances_before(&transaction, account_id, at_ns.saturating_add(1), position.op).await?;
        transaction.commit().await?;
        Ok((balances, position.op))
    }

    /// Whether transfer `id` was applied, for a gateway whose retry the engine refused as too old:
    /// `as_of_op` is an op at which the engine already refused it (its `op_durable` then), so any
    /// application of it is at or before that op. Until the projection has reached `as_of_op`
    /// the answer is `Behind`, never a guess.
    pub async fn transfer_applied(&self, id: u128, as_of_op: u64) -> Result<Applied, HistoryError> {
        let mut answers = self.transfers_applied(&[id], as_of_op).await?;
        assert_eq!(answers.len(), 1);
        Ok(answers.pop().expect("one answer"))
    }

    /// `transfer_applied` for several ids at once (a batch of retries refused in one frame at
    /// `as_of_op`), read at one position: one answer per id, in order.
    pub async fn transfers_applied(&self, ids: &[u128], as_of_op: u64) -> Result<Vec<Applied>, HistoryError> {
        assert!(as_of_op > 0, "an op at which the engine refused: ops start at 1");
        let mut client = self.pool.get().await?;
        let transaction = reading(&mut client).await?;
        let (position, _) = position_read(&transaction).await?;
        let found = transfers_read(&transaction, ids).await?;
        transaction.commit().await?;
        let answers: Vec<Applied> = ids
            .iter()
            .map(|id| match found.iter().find(|transfer| transfer.id == *id) {
                Some(transfer) => Applied::Yes(Box::new(transfer.clone())),
                None if position.op >= as_of_op => Applied::No { position: position.op },
                None => Applied::Behind { position: position.op, as_of_op },
            })
            .collect();
        assert_eq!(answers.len(), ids.len());
        Ok(answers)
    }
}

/// One consistent snapshot for a multi-statement read (the projection commits meanwhile): a
/// read-only REPEATABLE READ transaction.
async fn reading(client: &mut tokio_postgres::Client) -> Result<tokio_postgres::Transaction<'_>, HistoryError> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// The balances after the account's last entry before `before_ns`, among the entries at or
/// before op `position` (the writer's entry sessions commit just before its position does).
async fn balances_before(
    client: &impl tokio_postgres::GenericClient,
    account_id: u128,
    before_ns: u64,
    position: u64,
) -> Result<Balances, HistoryError> {
    let row = client
        .query_opt(
            "SELECT debits_pending::text, debits_posted::text, credits_pending::text, credits_posted::text
             FROM ledger_entries WHERE account_id = $1 AND timestamp_ns < $2 AND op <= $3
             ORDER BY timestamp_ns DESC LIMIT 1",
            &[&Uuid128(account_id), &i64_of(before_ns.min(i64::MAX as u64)), &i64_of(position)],
        )
        .await?;
    Ok(row.map_or(Balances::default(), |row| Balances {
        debits_pending: amount(&row, 0),
        debits_posted: amount(&row, 1),
        credits_pending: amount(&row, 2),
        credits_posted: amount(&row, 3),
    }))
}

const TRANSFER_SELECT: &str = "SELECT t.id, t.debit_account_id, t.credit_account_id, t.amount::text, t.pending_id,
        t.user_data_128, t.user_data_64::text, t.user_data_32, t.timeout_s, t.ledger, t.code, t.flags, t.timestamp_ns,
        t.op, t.status, h.resolved_by, h.resolved_timestamp_ns
    FROM transfers t LEFT JOIN holds h ON h.id = t.id";

async fn transfer_read(
    client: &impl tokio_postgres::GenericClient,
    id: u128,
) -> Result<Option<TransferView>, HistoryError> {
    let row = client.query_opt(&format!("{TRANSFER_SELECT} WHERE t.id = $1"), &[&Uuid128(id)]).await?;
    Ok(row.as_ref().map(transfer_of))
}

async fn transfers_read(
    client: &impl tokio_postgres::GenericClient,
    ids: &[u128],
) -> Result<Vec<TransferView>, HistoryError> {
    let ids: Vec<Uuid128> = ids.iter().map(|&id| Uuid128(id)).collect();
    let rows = client.query(&format!("{TRANSFER_SELECT} WHERE t.id = ANY($1)"), &[&ids]).await?;
    Ok(rows.iter().map(transfer_of).collect())
}

fn transfer_of(row: &Row) -> TransferView {
    TransferView {
        id: row.get::<_, Uuid128>(0).0,
        debit_account_id: row.get::<_, Uuid128>(1).0,
        credit_account_id: row.get::<_, Uuid128>(2).0,
        amount: amount(row, 3),
        pending_id: row.get::<_, Option<Uuid128>>(4).map(|id| id.0),
        user_data_128: row.get::<_, Uuid128>(5).0,
        user_data_64: row.get::<_, String>(6).parse().expect("a u64 stored as numeric"),
        user_data_32: row.get::<_, i64>(7) as u32,
        timeout_s: row.get::<_, i64>(8) as u32,
        ledger: row.get::<_, i64>(9) as u32,
        code: row.get::<_, i32>(10) as u16,
        flags: row.get::<_, i32>(11) as u16,
        timestamp_ns: row.get::<_, i64>(12) as u64,
        op: row.get::<_, i64>(13) as u64,
        status: row.get(14),
        resolved_by: row.get::<_, Option<Uuid128>>(15).map(|id| id.0),
        resolved_timestamp_ns: row.get::<_, Option<i64>>(16).map(|ns| ns as u64),
    }
}

/// A numeric column read as text.
pub(crate) fn amount(row: &Row, index: usize) -> u128 {
    row.get::<_, String>(index).parse().expect("an amount is a non-negative integer")
}

fn entry_of(row: &Row) -> Entry {
    let side: i8 = row.get(2);
    Entry {
        timestamp_ns: row.get::<_, i64>(0) as u64,
        transfer_id: row.get::<_, Uuid128>(1).0,
        side: side as u8 as char,
        counterparty_id: row.get::<_, Uuid128>(3).0,
        ledger: row.get::<_, i64>(4) as u32,
        amount: amount(row, 5),
        op: row.get::<_, i64>(6) as u64,
        after: Balances {
            debits_pending: amount(row, 7),
            debits_posted: amount(row, 8),
            credits_pending: amount(row, 9),
            credits_posted: amount(row, 10),
        },
    }
}
