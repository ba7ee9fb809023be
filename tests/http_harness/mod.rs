//! The harness of the HTTP gateway's end-to-end tests: one small starter per real service.
//! Each starts its process on a free port of 127.0.0.1 in a temporary directory, waits until it
//! answers (a line on stdout, or a PING), and kills it on drop. Never the machine's own Redis.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WALLETD: &str = env!("CARGO_BIN_EXE_walletd");
pub const SECRET: &str = "walletd-http-test-secret-0123456789abcdef";

/// Waits for `ready` with a bounded deadline, polling (no fixed sleeps in the tests).
pub fn wait_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !ready() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn port_free() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A process killed (SIGKILL) on drop.
pub struct Process(Option<Child>);

impl Process {
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns and reads stdout until a line starting with `prefix`; returns the rest of the line.
/// stdout is kept drained by a thread so the child never blocks on it.
fn spawn_until_line(command: &mut Command, prefix: &str) -> (Process, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    let prefix = prefix.to_string();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(rest) = line.strip_prefix(&prefix) {
                    let _ = sender.send(rest.trim().to_string());
                    sent = true;
                }
            }
        }
    });
    let rest = receiver.recv_timeout(Duration::from_secs(60)).expect("the process prints its address");
    (Process(Some(child)), rest)
}

// ---------------------------------------------------------------------------------------------
// Redis.

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Process,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = port_free();
        let process = redis_spawn(dir.path(), port);
        RedisServer { port, dir, process }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        self.process.kill();
        wait_until("redis to stop", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", self.port)).is_err());
    }

    pub fn restart(&mut self) {
        self.stop();
        self.process = redis_spawn(self.dir.path(), self.port);
    }

    /// One command, inline protocol; returns the first reply line.
    pub fn command(&self, command: &str) -> String {
        redis_command(self.port, command).expect("redis answers")
    }
}

fn redis_spawn(dir: &Path, port: u16) -> Process {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (apt-get install redis-server)");
    let process = Process(Some(child));
    wait_until("redis to answer PING", Duration::from_secs(20), || {
        redis_command(port, "PING").is_some_and(|r| r == "+PONG")
    });
    process
}

fn redis_command(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line.trim_end().to_string())
}

// ---------------------------------------------------------------------------------------------
// The engine and the gateway.

pub struct Engine {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    extra: Vec<String>,
    process: Process,
}

impl Engine {
    pub fn start(dir: &Path) -> Engine {
        Engine::start_with(dir, &[])
    }

    /// `walletd serve` with extra flags (e.g. a small `--transfers-max` window).
    pub fn start_with(dir: &Path, extra: &[&str]) -> Engine {
        let extra: Vec<String> = extra.iter().map(|flag| flag.to_string()).collect();
        let (process, addr) = engine_spawn(dir, None, &extra);
        Engine { addr, dir: dir.to_path_buf(), extra, process }
    }

    /// Kills the engine (SIGKILL) and starts it again on the same directory and port.
    pub fn restart(&mut self) {
        self.process.kill();
        let (process, addr) = engine_spawn(&self.dir, Some(self.addr), &self.extra);
        assert_eq!(addr, self.addr);
        self.process = process;
    }
}

fn engine_spawn(dir: &Path, addr: Option<SocketAddr>, extra: &[String]) -> (Process, SocketAddr) {
    let addr = addr.map_or("127.0.0.1:0".to_string(), |addr| addr.to_string());
    let mut command = Command::new(WALLETD);
    command
        .args(["serve", "--http", "off", "--addr", &addr, "--accounts-max", "65536", "--segment-size", "67108864"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir);
    // The port may still be held for a moment after a kill: retry the bind.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (process, line) = spawn_until_line_or_exit(&mut command, "walletd listening on ");
        if let Some(line) = line {
            let addr = line.split_whitespace().next().unwrap().parse().unwrap();
            return (process, addr);
        }
        assert!(Instant::now() < deadline, "the engine did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like `spawn_until_line`, but `None` if the process exits first.
fn spawn_until_line_or_exit(command: &mut Command, prefix: &str) -> (Process, Option<String>) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    let prefix = prefix.to_string();
    std::thread::spawn(move || {
        let mut found = None;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if found.is_none() {
                if let Some(rest) = line.trim_end().strip_prefix(&prefix) {
                    found = Some(rest.to_string());
                    let _ = sender.send(found.clone());
                }
            }
            line.clear();
        }
        if found.is_none() {
            let _ = sender.send(None);
        }
    });
    let line = receiver.recv_timeout(Duration::from_secs(60)).unwrap_or(None);
    (Process(Some(child)), line)
}

pub struct Gateway {
    pub addr: SocketAddr,
    pub secret_file: PathBuf,
    process: Process,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// `walletd http` against `engine`, with the test secret and extra flags.
    pub fn start(engine: SocketAddr, extra: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let mut command = Command::new(WALLETD);
        command
            .args(["http", "--listen", "127.0.0.1:0", "--engine", &engine.to_string()])
            .arg("--jwt-secret-file")
            .arg(&secret_file)
            .args(extra);
        let (process, addr) = spawn_until_line(&mut command, "walletd http listening on ");
        let gateway = Gateway { addr: addr.parse().unwrap(), secret_file, process, _dir: dir };
        wait_until("the gateway to reach the engine", Duration::from_secs(30), || {
            http(gateway.addr, "GET", "/readyz", None, None).status == 200
        });
        gateway
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// `walletd http` with these flags must refuse to start: its exit status and its stderr.
    pub fn start_refused(engine: SocketAddr, extra: &[&str]) -> (std::process::ExitStatus, String) {
        let mut command = Command::new(WALLETD);
        command.args(["http", "--listen", "127.0.0.1:0", "--engine", &engine.to_string()]).args(extra);
        run_to_exit(&mut command)
    }
}

/// Runs a command that must exit by itself (bounded wait; killed if it does not): its exit
/// status and its stderr. A process that starts serving instead fails the test.
pub fn run_to_exit(command: &mut Command) -> (std::process::ExitStatus, String) {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut process = Process(Some(child));
    let mut status = None;
    wait_until("the process to exit", Duration::from_secs(60), || {
        status = process.0.as_mut().and_then(|child| child.try_wait().expect("wait"));
        status.is_some()
    });
    process.0 = None;
    (status.unwrap(), reader.join().unwrap())
}

// ---------------------------------------------------------------------------------------------
// The history projection: `walletd project postgres` following a live data directory.

/// A projection child (killed on drop); its `projected <op>` lines advance `op`.
pub struct Projection {
    process: Process,
    op: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Projection {
    pub fn start(dir: &Path, database_url: &str) -> Projection {
        let mut child = Command::new(WALLETD)
            .args(["project", "postgres", "--print-progress", "--database-url", database_url, "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("walletd project postgres");
        let stdout = child.stdout.take().unwrap();
        let op = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = std::sync::Arc::clone(&op);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(projected) = line.strip_prefix("projected ").and_then(|op| op.parse().ok()) {
                    seen.fetch_max(projected, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Projection { process: Process(Some(child)), op }
    }

    /// The last op it reported committed.
    pub fn op(&self) -> u64 {
        self.op.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (bounded) until it has committed `op`.
    pub fn wait_for(&self, op: u64) {
        wait_until(&format!("the projection to reach op {op}"), Duration::from_secs(120), || self.op() >= op);
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// The data directory's durable op (the engine's `op_durable`).
/// Pushes `frames` frames of 8189 transfers between two accounts of their own through the
/// binary protocol, each frame's ids a millisecond newer than the last, so that with a window
/// smaller than that every earlier transfer is forgotten and the horizon rises past its time.
pub fn window_push(engine: SocketAddr, frames: u64) {
    use walletd_core::{Account, AccountId, Amount, Transfer, TransferId};
    let client = walletd_gateway::Client::connect(engine, walletd_gateway::ClientOptions::default()).unwrap();
    let accounts =
        [1u128, 2].map(|id| Account { id: AccountId((9 << 120) | id), ledger: 9, code: 1, ..Account::default() });
    let created = client.create_accounts(&accounts).unwrap();
    assert!(created.iter().all(|result| result.code == walletd_core::CreateAccountResult::Exists as u32));
    let mut time_ms = 0;
    let mut low = u128::from(walletd_http::ids::now_ms()) << 32;
    for _ in 0..frames {
        time_ms = walletd_http::ids::now_ms().max(time_ms + 1);
        let batch: Vec<Transfer> = (0..8189)
            .map(|_| {
                low += 1;
                Transfer {
                    id: TransferId::from_parts(time_ms, (7 << 72) | low),
                    debit_account_id: accounts[0].id,
                    credit_account_id: accounts[1].id,
                    amount: Amount(1),
                    ledger: 9,
                    code: 1,
                    ..Transfer::default()
                }
            })
            .collect();
        assert!(client.create_transfers(&batch).unwrap().is_empty());
    }
}

pub fn op_durable(dir: &Path) -> u64 {
    walletd_replay::durable_read(dir).expect("the durable mark reads").map_or(0, |mark| mark.op)
}

pub fn token(sub: &str, scopes: &[&str]) -> String {
    walletd_http::auth::token_mint(SECRET.as_bytes(), "walletd-dev", "walletd", sub, scopes, 3600)
}

// ---------------------------------------------------------------------------------------------
// A tiny blocking HTTP/1.1 client: one request per connection.

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub json: serde_json::Value,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Response {
    http_raw(addr, method, path, token, body.map(|body| body.to_string()).as_deref(), &[])
}

pub fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Response {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return Response { status: 0, headers: Vec::new(), json: serde_json::Value::Null };
    };
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    if stream.write_all(request.as_bytes()).is_err() {
        return Response { status: 0, headers: Vec::new(), json: serde_json::Value::Null };
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    response_parse(&raw)
}

/// A GET whose body is text (e.g. `/metrics`); empty if the request failed.
pub fn http_text(addr: SocketAddr, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else { return String::new() };
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.split_once("\r\n\r\n").map_or_else(String::new, |(_, body)| body.to_string())
}

/// The value of an unlabelled metric in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn response_parse(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Response { status: 0, headers: Vec::new(), json: serde_json::Value::Null };
    };
    let mut lines = head.lines();
    let status =
        lines.next().and_then(|line| line.split_whitespace().nth(1)).and_then(|code| code.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    Response { status, headers, json }
}
