//! A throwaway PostgreSQL for tests and benchmarks: `initdb` into a temporary directory, a free
//! port on 127.0.0.1, `pg_ctl start -w` (which returns once the server accepts connections),
//! and `pg_ctl stop -m immediate` on drop. It never touches the machine's own PostgreSQL.
//!
//! The binaries are looked up on PATH, then in Debian's /usr/lib/postgresql/N/bin (newest N).
//! PostgreSQL refuses to run as root, so under root the cluster is owned by and run as the
//! `postgres` user (which Debian's package creates).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The user the server runs as, when this process is root.
    owner: Option<(u32, u32)>,
    running: bool,
}

impl TestPostgres {
    /// Starts a new cluster; panics with the reason if it cannot (a test harness).
    pub fn start() -> TestPostgres {
        let bin = postgres_bin().expect("PostgreSQL's initdb and pg_ctl on PATH or in /usr/lib/postgresql/*/bin");
        let dir = tempfile::Builder::new().prefix("walletd-pg-").tempdir().expect("a temporary directory");
        let owner = owner_when_root();
        if let Some((uid, gid)) = owner {
            chown(dir.path(), uid, gid);
        }
        let mut server = TestPostgres { dir, bin, port: 0, owner, running: false };
        server.run("initdb", &["-D", "data", "-U", "walletd", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]);
        server.start_again();
        server
    }

    /// Starts the stopped server again on the same port (or a new free one if the first start).
    pub fn start_again(&mut self) {
        assert!(!self.running, "already running");
        let mut attempts = 0;
        loop {
            if self.port == 0 || attempts > 0 {
                self.port = port_free();
            }
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories='{}' -c fsync=off -c max_wal_size=4GB -c max_prepared_transactions=8 \
                 -c shared_buffers=256MB",
                self.port,
                self.dir.path().display()
            );
            let started = self
                .command("pg_ctl", &["-D", "data", "-l", "postgres.log", "-w", "-t", "60", "-o", &options, "start"]);
            if started.success() {
                self.running = true;
                return;
            }
            attempts += 1;
            assert!(
                attempts < 3,
                "pg_ctl start failed 3 times; see {}",
                self.dir.path().join("postgres.log").display()
            );
        }
    }

    /// Stops the server at once (as a crash would: no checkpoint), keeping its data.
    pub fn stop(&mut self) {
        if self.running {
            self.command("pg_ctl", &["-D", "data", "-m", "immediate", "-w", "stop"]);
            self.running = false;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for `tokio_postgres::Config` (and `--database-url`).
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=walletd dbname=postgres", self.port)
    }

    pub fn config(&self) -> tokio_postgres::Config {
        self.url().parse().expect("a valid connection string")
    }

    /// Runs `sql` (one or more statements, simple protocol) and returns the rows of its results
    /// as text, for tests that look at or tamper with the tables directly.
    pub fn sql(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            let (client, connection) = self.config().connect(tokio_postgres::NoTls).await.expect("connects");
            tokio::spawn(connection);
            let messages = client.simple_query(sql).await.unwrap_or_else(|error| panic!("{sql}: {error:?}"));
            messages
                .into_iter()
                .filter_map(|message| match message {
                    tokio_postgres::SimpleQueryMessage::Row(row) => {
                        Some((0..row.len()).map(|index| row.get(index).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect()
        })
    }

    /// The first column of the first row of `sql`, as text.
    pub fn sql_value(&self, sql: &str) -> String {
        self.sql(sql).first().and_then(|row| row.first().cloned().flatten()).unwrap_or_default()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let status = self.command(program, args);
        assert!(status.success(), "{program} {args:?} failed");
    }

    fn command(&self, program: &str, args: &[&str]) -> std::process::ExitStatus {
        let mut command = Command::new(self.bin.join(program));
        command.args(args).current_dir(self.dir.path()).env("LC_ALL", "C").stdout(std::process::Stdio::null());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command.status().unwrap_or_else(|error| panic!("{program} runs: {error}"))
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory holding initdb and pg_ctl.
fn postgres_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn owner_when_root() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: a valid C string; the returned record is read at once, before any other call
    // that could reuse its static storage.
    let record = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!record.is_null(), "running as root needs a `postgres` user for the test server (apt install postgresql)");
    // SAFETY: non-null, just returned by getpwnam.
    Some(unsafe { ((*record).pw_uid, (*record).pw_gid) })
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown the test server's directory");
}

fn port_free() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("address").port()
}
