//! The broker harness for tests and benchmarks: a real Kafka-protocol broker (tansu) in its own
//! process, on a free port of 127.0.0.1, with its storage in a temporary directory (SQLite, so
//! it survives a restart), ready when it accepts connections, killed on drop. Every test that
//! needs a broker starts it through here.
//!
//! The binary is `$WALLETD_TANSU` if set, else `tansu` on the PATH or in `~/.cargo/bin`
//! (`.ci/run` installs it: `cargo install tansu --version 0.6.0 --locked --features
//! dynostore,libsql,postgres`). `Broker::available()` says whether there is one, so tests
//! that need it can say plainly that they were skipped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Broker {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
    binary: PathBuf,
    /// Removed on drop unless the test is kept for inspection (`WALLETD_KEEP_BROKER`).
    owned_dir: bool,
}

impl Broker {
    /// The broker binary, if one is installed.
    pub fn binary() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("WALLETD_TANSU") {
            return Some(PathBuf::from(path));
        }
        let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("tansu")).collect())
            .unwrap_or_default();
        if let Some(home) = std::env::var_os("HOME") {
            candidates.push(Path::new(&home).join(".cargo/bin/tansu"));
        }
        candidates.into_iter().find(|path| path.is_file())
    }

    pub fn available() -> bool {
        Broker::binary().is_some()
    }

    /// A broker for a test: None (the test says it is skipped) when no binary is installed,
    /// unless `WALLETD_REQUIRE_BROKER` is set (CI sets it), which makes a missing broker a
    /// failure; a broker that is installed but does not start is always a failure.
    pub fn for_test() -> Option<Broker> {
        if !Broker::available() {
            assert!(
                std::env::var_os("WALLETD_REQUIRE_BROKER").is_none(),
                "WALLETD_REQUIRE_BROKER is set and no tansu binary is installed (WALLETD_TANSU, PATH, ~/.cargo/bin)"
            );
            eprintln!("skipped: no Kafka-protocol broker (tansu) installed; .ci/run installs it");
            return None;
        }
        Some(Broker::start().expect("start the broker"))
    }

    /// Starts a broker with fresh storage in a new temporary directory.
    pub fn start() -> std::io::Result<Broker> {
        let binary = Broker::binary().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no tansu binary: set WALLETD_TANSU or install it")
        })?;
        let dir = std::env::temp_dir().join(format!("walletd-broker-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir)?;
        let addr = port_free()?;
        let mut broker =
            Broker { child: None, addr, dir, binary, owned_dir: std::env::var_os("WALLETD_KEEP_BROKER").is_none() };
        broker.spawn()?;
        Ok(broker)
    }

    /// `host:port`, for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        self.addr.to_string()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        assert!(self.child.is_none(), "one broker process at a time");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("broker.log"))?;
        let url = format!("tcp://{}", self.addr);
        let child = Command::new(&self.binary)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(["--cluster-id", "walletd-test"])
            .current_dir(&self.dir)
            .env("RUST_LOG", std::env::var("WALLETD_BROKER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.ready_wait()
    }

    /// Waits until the broker accepts a connection, or fails if it exits or takes too long.
    fn ready_wait(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().expect("spawned").try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
                return Err(std::io::Error::other(format!("the broker exited with {status}: {log}")));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("the broker did not accept connections in time"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker and starts it again on the same port and storage.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Starts a killed broker again on the same port and storage.
    pub fn start_again(&mut self) -> std::io::Result<()> {
        self.spawn()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if self.owned_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn port_free() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.local_addr()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One message of a topic as a test reads it back.
#[derive(Clone, Debug)]
pub struct Consumed {
    pub offset: i64,
    pub key: String,
    /// The message's bytes as the broker returned them, for checks on the wire form.
    pub payload: Vec<u8>,
    pub event: crate::event::Event,
}

/// Every message of partitions `0..partitions` of `topic`, per partition in offset order,
/// read from the beginning to the end as the broker reports it.
pub fn topic_read(
    brokers: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<Vec<Consumed>>, crate::ExportError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::error::KafkaError;
    use rdkafka::Message;
    let consumer = crate::tail::tail_consumer(brokers, &[])?;
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
            .map_err(crate::ExportError::kafka("assigning"))?;
    }
    consumer.assign(&list).map_err(crate::ExportError::kafka("assigning"))?;
    let mut read: Vec<Vec<Consumed>> = (0..partitions).map(|_| Vec::new()).collect();
    let mut ended = vec![false; partitions as usize];
    let deadline = Instant::now() + timeout;
    while ended.iter().any(|ended| !ended) {
        if Instant::now() > deadline {
            return Err(crate::ExportError::Timeout(format!("reading {topic} to its end")));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => ended[partition as usize] = true,
            Some(Err(error)) => return Err(crate::ExportError::kafka("reading the topic")(error)),
            Some(Ok(message)) => {
                let partition = message.partition() as usize;
                ended[partition] = false;
                let bad = |reason: String| crate::ExportError::BadMessage {
                    topic: topic.to_string(),
                    partition: message.partition(),
                    offset: message.offset(),
                    reason,
                };
                let key = std::str::from_utf8(message.key().unwrap_or_default())
                    .map_err(|error| bad(error.to_string()))?
                    .to_string();
                let payload = message.payload().unwrap_or_default().to_vec();
                let event = serde_json::from_slice(&payload).map_err(|error| bad(error.to_string()))?;
                read[partition].push(Consumed { offset: message.offset(), key, payload, event });
            }
        }
    }
    Ok(read)
}
