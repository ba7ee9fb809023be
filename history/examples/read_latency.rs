//! The history's read latency as a wallet's users see it: pages and statements through
//! `History` (the pool, the REPEATABLE READ transaction, the position read, the decoding), not
//! bare SQL. A benchmark, not a test: it prints figures and asserts nothing about time.
//!
//! ```text
//! cargo run --release -p walletd-history --example read_latency -- \
//!     --database-url "host=127.0.0.1 port=… user=walletd dbname=postgres" \
//!     --entries-near 100000 --seconds 20 --query page
//! ```
//!
//! The wallet is `--account`, or the one whose entry count is nearest `--entries-near`.
//! `--query page` reads the first page (newest 50); `page-deep` a page at a depth drawn
//! uniformly over the wallet's time range (a seeded generator: reruns read the same pages);
//! `statement` the whole time range as one statement (all of the wallet's entries: the
//! generated journals fall in one month). One closed-loop reader per `--readers`; every read's
//! latency goes into an HDR histogram; the figures are printed as one JSON line.

use clap::Parser;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use walletd_history::query::{Cursor, History};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    account: Option<String>,
    #[arg(long, default_value_t = 100_000)]
    entries_near: i64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// `page`, `page-deep` or `statement`.
    #[arg(long, default_value = "page")]
    query: String,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[arg(long, default_value_t = 1)]
    readers: u32,
    /// Stop after this many reads per reader even if time is left.
    #[arg(long, default_value_t = 10_000_000)]
    reads_max: u64,
}

/// The wallet read and its time range `[first, last]` of entries.
struct Wallet {
    id: u128,
    entries_count: i64,
    first_ns: u64,
    last_ns: u64,
}

async fn wallet_pick(args: &Args) -> Wallet {
    let (client, connection) =
        tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await.expect("PostgreSQL reachable");
    tokio::spawn(connection);
    let id = match &args.account {
        Some(text) => walletd_history::cli::id_parse(text).expect("an account id"),
        None => {
            let row = client
                .query_one(
                    "SELECT account_id::text FROM ledger_entries GROUP BY account_id
                     ORDER BY abs(count(*) - $1) LIMIT 1",
                    &[&args.entries_near],
                )
                .await
                .expect("a wallet with entries");
            walletd_history::cli::id_parse(&row.get::<_, String>(0)).expect("a uuid")
        }
    };
    let row = client
        .query_one(
            "SELECT count(*), min(timestamp_ns), max(timestamp_ns) FROM ledger_entries WHERE account_id = $1::text::uuid",
            &[&walletd_history::pgtypes::Uuid128(id).to_string()],
        )
        .await
        .expect("the wallet's entries");
    let (entries_count, first, last): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    Wallet { id, entries_count, first_ns: first as u64, last_ns: last as u64 }
}

/// A small seeded generator (xorshift64*), so reruns read the same pages.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

async fn reader(history: History, args: &Args, wallet: &Wallet, seed: u64) -> (Histogram<u64>, u64) {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let (mut state, mut rows) = (seed | 1, 0u64);
    for _ in 0..args.reads_max {
        if Instant::now() >= deadline {
            break;
        }
        let span = wallet.last_ns - wallet.first_ns + 1;
        let started = Instant::now();
        rows += match args.query.as_str() {
            "page" => history.transactions(wallet.id, None, args.limit).await.expect("a page").entries.len(),
            "page-deep" => {
                let timestamp_ns = wallet.first_ns + next_random(&mut state) % span;
                let cursor = Cursor { timestamp_ns, transfer_id: u128::MAX };
                history.transactions(wallet.id, Some(cursor), args.limit).await.expect("a page").entries.len()
            }
            "statement" => history
                .statement(wallet.id, wallet.first_ns, wallet.last_ns + 1)
                .await
                .expect("a statement")
                .entries
                .len(),
            other => panic!("unknown --query {other}: page, page-deep or statement"),
        } as u64;
        histogram.record(started.elapsed().as_micros().max(1) as u64).expect("within bounds");
    }
    (histogram, rows)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let wallet = wallet_pick(&args).await;
    let history = History::from_url(&args.database_url, args.readers as usize).expect("a pool");
    history.schema_check().await.expect("a history schema");
    let started = Instant::now();
    let readers = (0..args.readers).map(|index| reader(history.clone(), &args, &wallet, 0x5eed + u64::from(index)));
    let results = futures_util::future::join_all(readers).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut rows = 0;
    for (one, one_rows) in &results {
        histogram.add(one).expect("same bounds");
        rows += one_rows;
    }
    let entries_total: i64 = {
        let (client, connection) =
            tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await.expect("PostgreSQL reachable");
        tokio::spawn(connection);
        client.query_one("SELECT count(*) FROM ledger_entries", &[]).await.expect("a count").get(0)
    };
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "query": args.query,
            "account": walletd_history::pgtypes::Uuid128(wallet.id).to_string(),
            "account_entries": wallet.entries_count,
            "entries_total": entries_total,
            "readers": args.readers,
            "reads": histogram.len(),
            "rows_per_read": rows as f64 / histogram.len().max(1) as f64,
            "reads_per_s": histogram.len() as f64 / seconds,
            "ms_mean": histogram.mean() / 1000.0,
            "ms_p50": ms(0.50),
            "ms_p99": ms(0.99),
            "ms_p999": ms(0.999),
            "ms_max": histogram.max() as f64 / 1000.0,
        })
    );
}
