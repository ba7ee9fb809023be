//! The schema is files: `history/migrations/NNNN_name.sql`, compiled in, applied in order by the
//! projection when it starts, each in the transaction that records it in `walletd_schema`
//! (version, name, a checksum of the file's text). A database whose recorded version is newer
//! than the newest file here, whose recorded migration names or checksums differ from these
//! files, or that holds history tables without a version, is refused: this walletd does not know
//! that schema and would write it wrongly. Readers (`walletd history`, `walletd reconcile`) only
//! check; they never migrate.

use crate::error::HistoryError;
use tokio_postgres::Client;

/// A migration file.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "0001_init", sql: include_str!("../migrations/0001_init.sql") },
    Migration {
        version: 2,
        name: "0002_transfer_trace_id",
        sql: include_str!("../migrations/0002_transfer_trace_id.sql"),
    },
    Migration { version: 3, name: "0003_writer_staging", sql: include_str!("../migrations/0003_writer_staging.sql") },
];

/// The schema version this walletd reads and writes.
pub const SCHEMA_VERSION: i32 = 3;
const _: () = assert!(MIGRATIONS.len() == SCHEMA_VERSION as usize);

/// Serialises projections that migrate at the same time (any constant, shared by all).
const MIGRATE_LOCK_KEY: i64 = 0x7761_6c6c_6574;

const SCHEMA_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS walletd_schema (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// FNV-1a (64 bits) of a migration's text: an edited migration file is noticed.
fn checksum(sql: &str) -> String {
    let hash =
        sql.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3));
    format!("{hash:016x}")
}

/// Applies the migrations the database lacks; returns the version it is now at.
pub async fn migrate(client: &mut Client) -> Result<i32, HistoryError> {
    migrate_to(client, SCHEMA_VERSION).await
}

/// Applies the migrations up to `version` (1 to `SCHEMA_VERSION`) that the database lacks;
/// returns the version it is now at. Below `SCHEMA_VERSION` only for tests that build a
/// database as an older walletd left it; one already past `version` is left as it is.
pub async fn migrate_to(client: &mut Client, version: i32) -> Result<i32, HistoryError> {
    assert!((1..=SCHEMA_VERSION).contains(&version), "a version this walletd has a migration for");
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK_KEY]).await?;
    let untracked = transaction
        .query_opt(
            "SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'projection_position'
             AND NOT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema()
                             AND tablename = 'walletd_schema')",
            &[],
        )
        .await?;
    if untracked.is_some() {
        return Err(HistoryError::SchemaUnknown {
            reason: "history tables exist but walletd_schema does not record their version".into(),
        });
    }
    transaction.batch_execute(SCHEMA_TABLE_SQL).await?;
    let applied = applied_check(&transaction).await?;
    assert!(applied <= SCHEMA_VERSION, "applied_check refuses newer schemas");
    for migration in MIGRATIONS.iter().skip(applied as usize).take_while(|migration| migration.version <= version) {
        transaction.batch_execute(migration.sql).await?;
        transaction
            .execute(
                "INSERT INTO walletd_schema (version, name, checksum) VALUES ($1, $2, $3)",
                &[&migration.version, &migration.name, &checksum(migration.sql)],
            )
            .await?;
        tracing::info!(version = migration.version, name = migration.name, "history schema migrated");
    }
    transaction.commit().await?;
    Ok(applied.max(version))
}

/// For readers: the database must be at exactly the version this walletd knows.
pub async fn schema_check(client: &Client) -> Result<(), HistoryError> {
    let exists = client.query_opt("SELECT to_regclass('walletd_schema') IS NOT NULL AS present", &[]).await?;
    if !exists.is_some_and(|row| row.get::<_, bool>(0)) {
        return Err(HistoryError::SchemaUnknown {
            reason: "no walletd_schema table: run `walletd project postgres` first, which creates the schema".into(),
        });
    }
    let version = applied_check(client).await?;
    if version < SCHEMA_VERSION {
        return Err(HistoryError::SchemaUnknown {
            reason: format!(
                "the schema is at version {version}, this walletd reads version {SCHEMA_VERSION}: run \
                 `walletd project postgres`, which migrates it"
            ),
        });
    }
    Ok(())
}

/// Checks the recorded migrations against the files; returns how many are applied.
async fn applied_check(client: &impl tokio_postgres::GenericClient) -> Result<i32, HistoryError> {
    let rows = client.query("SELECT version, name, checksum FROM walletd_schema ORDER BY version", &[]).await?;
    for (index, row) in rows.iter().enumerate() {
        let (version, name, recorded): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        if version > SCHEMA_VERSION {
            return Err(HistoryError::SchemaTooNew { found: version, known: SCHEMA_VERSION });
        }
        let migration = &MIGRATIONS[index];
        if version != migration.version || name != migration.name || recorded != checksum(migration.sql) {
            return Err(HistoryError::SchemaUnknown {
                reason: format!(
                    "version {version} is recorded as {name} (checksum {recorded}), this walletd's is {} (checksum {})",
                    migration.name,
                    checksum(migration.sql)
                ),
            });
        }
    }
    Ok(rows.len() as i32)
}
