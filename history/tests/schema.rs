//! The schema against a real PostgreSQL (the harness's): applied once, idempotent at the next
//! start, and a database at a version this walletd does not know is refused.

use walletd_history::harness::TestPostgres;
use walletd_history::schema::{migrate, schema_check, SCHEMA_VERSION};
use walletd_history::HistoryError;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

async fn connect(server: &TestPostgres) -> tokio_postgres::Client {
    let (client, connection) = server.config().connect(tokio_postgres::NoTls).await.expect("connects");
    tokio::spawn(connection);
    client
}

#[test]
fn migrations_apply_once_and_an_unknown_version_is_refused() {
    let server = TestPostgres::start();
    runtime().block_on(async {
        let mut client = connect(&server).await;
        assert!(matches!(schema_check(&client).await, Err(HistoryError::SchemaUnknown { .. })), "nothing yet");
        assert_eq!(migrate(&mut client).await.expect("migrates"), SCHEMA_VERSION);
        assert_eq!(migrate(&mut client).await.expect("a second start changes nothing"), SCHEMA_VERSION);
        schema_check(&client).await.expect("readers accept it");
        let partitioned: i64 = client
            .query_one("SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'ledger_entries'::regclass", &[])
            .await
            .expect("query")
            .get(0);
        assert_eq!(partitioned, 1, "ledger_entries is partitioned");

        client
            .execute("INSERT INTO walletd_schema (version, name, checksum) VALUES (99, '0099_future', 'x')", &[])
            .await
            .expect("a newer walletd's migration");
        let refused = migrate(&mut client).await.expect_err("refused");
        assert!(matches!(refused, HistoryError::SchemaTooNew { found: 99, .. }), "{refused}");
        assert!(schema_check(&client).await.is_err());
        client.execute("DELETE FROM walletd_schema WHERE version = 99", &[]).await.expect("delete");

        client.execute("UPDATE walletd_schema SET checksum = 'edited'", &[]).await.expect("update");
        let refused = migrate(&mut client).await.expect_err("an edited migration is refused");
        assert!(matches!(refused, HistoryError::SchemaUnknown { .. }), "{refused}");
    });
}
