//! The exporter end to end: the real `walletd export kafka` against a real Kafka-protocol broker
//! (tansu, through `walletd_export::broker`), on a journal that a live `walletd generate` is
//! still writing. The exporter is killed with SIGKILL at random moments (after a random number
//! of acknowledged events, read from its metrics), the broker is restarted once mid-run, and
//! at the end the whole topic is consumed and compared with a replay of the journal (a follower
//! run offline): every event exactly once, with the same fields, in op order per partition, in
//! the partition its key maps to.
//!
//! A live `walletd serve` given traced and untraced requests by the Rust client shows that each
//! request's trace id reaches its exported event, in JSON that the schema file accepts.
//!
//! Skipped, saying so, when no broker binary is installed (`.ci/run` installs one).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use walletd_core::{Transfer, TransferFlags};
use walletd_export::broker::{topic_read, Broker};
use walletd_export::{events_of, partition_of, Event, EventPosition, Status, SCHEMA_JSON};
use walletd_gateway::{Client, ClientOptions};
use walletd_replay::{FollowOptions, Follower};

const TOPIC: &str = "transaction.completed";
const PARTITIONS: i32 = 8;
const ROUNDS: u32 = 24;

struct Exporter {
    child: Child,
    metrics: SocketAddr,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_free() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

fn exporter_start(dir: &Path, brokers: &str, extra: &[&str]) -> Exporter {
    let metrics = port_free();
    let child = Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["export", "kafka", "--data-dir"])
        .arg(dir)
        .args(["--brokers", brokers, "--topic", TOPIC, "--partitions", &PARTITIONS.to_string()])
        .args(["--fence-ms", "200", "--metrics-addr", &metrics.to_string()])
        .args(extra)
        .env("RUST_LOG", std::env::var("WALLETD_EXPORT_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the exporter");
    Exporter { child, metrics }
}

/// One metric from the exporter's endpoint, or None while it is not up yet.
fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until the exporter has had `events` acknowledged in this session, or it exits, or
/// there is nothing left for it to send (the generator is done and it is caught up).
fn exported_wait(exporter: &mut Exporter, events: u64, generator_done: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if exporter.child.try_wait().expect("wait").is_some() {
            return;
        }
        if metric(exporter.metrics, "walletd_export_events_total").is_some_and(|count| count >= events) {
            return;
        }
        if generator_done.load(Ordering::Acquire)
            && metric(exporter.metrics, "walletd_export_op_exported").is_some_and(|op| op > 0)
            && metric(exporter.metrics, "walletd_export_lag_ops") == Some(0)
        {
            return;
        }
        assert!(Instant::now() < deadline, "the exporter made no progress to {events} events");
        // A metric is polled: the exporter prints nothing per event.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every event of the journal, by a follower run offline.
fn journal_events(dir: &Path) -> Vec<Event> {
    let mut follower = Follower::open(dir, None, FollowOptions::default()).expect("open a follower");
    let mut events = Vec::new();
    while let Some(op) = follower.next_op().expect("next op") {
        events.extend(events_of(&op));
    }
    events
}

/// The topic against the journal: each event once, fields equal, in order per partition.
fn topic_matches_journal(brokers: &str, dir: &Path) -> usize {
    let expected = journal_events(dir);
    let partitions = topic_read(brokers, TOPIC, PARTITIONS, Duration::from_secs(60)).expect("read the topic");
    let mut seen: BTreeMap<EventPosition, Event> = BTreeMap::new();
    for (partition, messages) in partitions.iter().enumerate() {
        let positions: Vec<EventPosition> = messages.iter().map(|message| message.event.position()).collect();
        for pair in positions.windows(2) {
            assert!(
                pair[0] < pair[1],
                "partition {partition}: {:?} then {:?} (duplicate or out of order)",
                pair[0],
                pair[1]
            );
        }
        for message in messages {
            assert_eq!(message.key, message.event.id, "keyed by transfer id");
            assert_eq!(partition_of(message.key.as_bytes(), PARTITIONS), partition as i32, "in its key's partition");
            let previous = seen.insert(message.event.position(), message.event.clone());
            assert!(previous.is_none(), "{:?} appears twice", message.event.position());
        }
    }
    assert_eq!(seen.len(), expected.len(), "the topic holds as many events as the journal made");
    for event in &expected {
        assert_eq!(
            seen.get(&event.position()),
            Some(event),
            "event {:?} is in the topic as the journal made it",
            event.position()
        );
    }
    expected.len()
}

fn generate_start(dir: &Path, transfers: u64) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["generate", "--data-dir"])
        .arg(dir)
        .args(["--transfers", &transfers.to_string(), "--accounts", "500", "--batch", "500"])
        .args(["--snapshot-ops", "64", "--two-phase-percent", "20", "--seed", "7", "--print-durable"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start walletd generate");
    child
}

/// Reads the generator's `durable <op>` lines until it has made `op` durable.
fn durable_wait(lines: &mut impl Iterator<Item = std::io::Result<String>>, op: u64) {
    for line in lines {
        let line = line.expect("read generate's output");
        if line.strip_prefix("durable ").and_then(|n| n.parse::<u64>().ok()).is_some_and(|done| done >= op) {
            return;
        }
    }
}

#[test]
fn an_offline_export_publishes_every_event_once_in_op_order() {
    let Some(broker) = Broker::for_test() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generate = generate_start(dir.path(), 5_000);
    assert!(generate.wait().expect("generate").success());
    let mut exporter = exporter_start(dir.path(), &broker.brokers(), &["--exit-when-caught-up"]);
    assert!(exporter.child.wait().expect("exporter").success(), "the exporter exits cleanly when caught up");
    let count = topic_matches_journal(&broker.brokers(), dir.path());
    assert!(count >= 5_000, "every transfer is an event, holds and their resolutions too: {count}");
    // A second run finds everything there and sends nothing.
    let mut again = exporter_start(dir.path(), &broker.brokers(), &["--exit-when-caught-up"]);
    let mut report = String::new();
    again.child.stdout.take().expect("stdout").read_to_string(&mut report).expect("report");
    assert!(again.child.wait().expect("exporter").success());
    assert!(report.starts_with("exported 0 events"), "nothing sent twice: {report}");
    topic_matches_journal(&broker.brokers(), dir.path());
}

/// The test's seed: `WALLETD_TEST_SEED` to repeat a run, else the clock; printed either way.
fn seed_chosen() -> u64 {
    let seed = std::env::var("WALLETD_TEST_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_nanos() as u64
    });
    eprintln!("seed {seed} (WALLETD_TEST_SEED={seed} repeats this run)");
    seed | 1
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn kill_9_of_the_exporter_and_a_broker_restart_still_give_every_event_exactly_once() {
    let Some(mut broker) = Broker::for_test() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generate = generate_start(dir.path(), 10_000);
    let mut lines = std::io::BufReader::new(generate.stdout.take().expect("stdout")).lines();
    durable_wait(&mut lines, 2);
    // The generator keeps writing while the exporter is killed and restarted under it.
    let generator_done = Arc::new(AtomicBool::new(false));
    let draining = std::thread::spawn({
        let generator_done = Arc::clone(&generator_done);
        move || {
            lines.for_each(drop);
            generator_done.store(true, Ordering::Release);
        }
    });
    let mut seed = seed_chosen();
    // Small requests, few in flight, so that a kill after N acknowledged events comes with few
    // more in flight and the rounds spread over the whole journal.
    let small_queue = ["--request-events-max", "16", "--requests-in-flight-max", "4"];
    for round in 0..ROUNDS {
        let mut exporter = exporter_start(dir.path(), &broker.brokers(), &small_queue);
        // One round in five is killed as soon as it is up (in its fence or while it reads the
        // partitions' ends), the others after a random number of acknowledged events.
        let events = match xorshift(&mut seed) % 5 {
            0 => 0,
            _ => 1 + xorshift(&mut seed) % 300,
        };
        exported_wait(&mut exporter, events, &generator_done);
        if round == ROUNDS / 2 {
            broker.restart().expect("restart the broker");
            exported_wait(&mut exporter, events + 1 + xorshift(&mut seed) % 300, &generator_done);
        }
        let exited = exporter.child.try_wait().expect("wait");
        assert!(exited.is_none(), "round {round}: the exporter stopped by itself: {exited:?}");
        let sent = metric(exporter.metrics, "walletd_export_events_total");
        let op = metric(exporter.metrics, "walletd_export_op_exported");
        eprintln!("round {round}: SIGKILL after {sent:?} events (waited for {events}), exported through op {op:?}");
        // Drop sends SIGKILL.
        drop(exporter);
    }
    assert!(generate.wait().expect("generate").success());
    draining.join().expect("drain");
    let mut exporter = exporter_start(dir.path(), &broker.brokers(), &["--exit-when-caught-up"]);
    assert!(exporter.child.wait().expect("exporter").success());
    let count = topic_matches_journal(&broker.brokers(), dir.path());
    eprintln!("{count} events exactly once after {ROUNDS} kills and a broker restart");
}

/// Waits until the exporter's metric `name` satisfies `done`, or fails after the deadline.
fn metric_wait(exporter: &mut Exporter, name: &str, what: &str, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(exporter.child.try_wait().expect("wait").is_none(), "the exporter exited while waiting for {what}");
        if let Some(value) = metric(exporter.metrics, name).filter(|value| done(*value)) {
            return value;
        }
        assert!(Instant::now() < deadline, "no {what} in time ({name} = {:?})", metric(exporter.metrics, name));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_broker_down_under_engine_load_leaves_the_engine_alone_and_the_lag_drains() {
    let Some(mut broker) = Broker::for_test() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generate = generate_start(dir.path(), 10_000);
    let mut lines = std::io::BufReader::new(generate.stdout.take().expect("stdout")).lines();
    durable_wait(&mut lines, 2);
    let mut exporter = exporter_start(dir.path(), &broker.brokers(), &[]);
    exported_wait(&mut exporter, 1, &AtomicBool::new(false));
    broker.kill();
    // The engine goes on to the end of its run with the broker down: it never waits for the
    // exporter (a generator blocked by it would never finish).
    let mut durable_last = 0u64;
    for line in lines {
        let line = line.expect("read generate's output");
        if let Some(op) = line.strip_prefix("durable ").and_then(|n| n.parse::<u64>().ok()) {
            durable_last = durable_last.max(op);
        }
    }
    assert!(generate.wait().expect("generate").success(), "the engine finished its run with the broker down");
    // The exporter saw the journal grow and could not publish it: the lag is there, counted to
    // the engine's last durable op even though the blocked follower has stopped reading.
    metric_wait(&mut exporter, "walletd_export_op_durable", "the engine's last durable op", |op| op == durable_last);
    let lag = metric_wait(&mut exporter, "walletd_export_lag_ops", "lag while the broker is down", |lag| lag > 0);
    let exported_down = metric(exporter.metrics, "walletd_export_op_exported").expect("metrics");
    assert!(exported_down < durable_last, "nothing past op {exported_down} is acknowledged while the broker is down");
    assert!(lag >= durable_last - exported_down, "lag {lag} counts every durable op not exported");
    eprintln!("broker down: lag {lag} ops, exported through op {exported_down} of {durable_last}");
    broker.start_again().expect("start the broker again");
    metric_wait(&mut exporter, "walletd_export_op_exported", "the lag draining", |op| op >= durable_last);
    metric_wait(&mut exporter, "walletd_export_lag_ops", "a lag of zero", |lag| lag == 0);
    drop(exporter);
    let count = topic_matches_journal(&broker.brokers(), dir.path());
    eprintln!("{count} events exactly once after the broker was down under load");
}

#[test]
fn a_second_exporter_of_the_same_topic_is_refused_while_the_first_runs() {
    let Some(broker) = Broker::for_test() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(generate_start(dir.path(), 1_000).wait().expect("generate").success());
    let mut first = exporter_start(dir.path(), &broker.brokers(), &[]);
    exported_wait(&mut first, 1, &AtomicBool::new(false));
    let second = Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["export", "kafka", "--data-dir"])
        .arg(dir.path())
        .args(["--brokers", &broker.brokers(), "--topic", TOPIC, "--partitions", &PARTITIONS.to_string()])
        .output()
        .expect("run a second exporter");
    assert!(!second.status.success(), "a second exporter is refused");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another exporter holds"), "it says why: {stderr}");
}

/// Traced calls of the Rust client to a live `walletd serve`, followed by a live exporter: every
/// event carries the trace id of the request that made it (a hold its placing request's, its
/// post the posting request's), an untraced request's events carry null, and every message on
/// the topic is valid against the schema file as the broker returned it.
#[test]
fn a_traced_request_trace_id_reaches_its_exported_event() {
    let Some(broker) = Broker::for_test() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, addr, _) = common::serve_binary(dir.path(), &["--http", "off"]);
    let client = Client::connect(addr, ClientOptions::default()).expect("connect");
    assert!(client.create_accounts(&common::accounts(4)).expect("accounts").is_empty());
    // id -> the trace id its request carried (0: untraced).
    let mut expected: BTreeMap<u128, u128> = BTreeMap::new();
    let traced: Vec<Transfer> = (0..6).map(|index| common::transfer(100 + index, 1, 2, 10 + index)).collect();
    let trace_ids: Vec<u128> = (0..6).map(|index| 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e47_0000 | (index + 1)).collect();
    assert!(client.create_transfers_traced(&traced, &trace_ids).expect("traced transfers").is_empty());
    expected.extend(traced.iter().map(|transfer| transfer.id.0).zip(trace_ids.iter().copied()));
    let untraced: Vec<Transfer> = (0..2).map(|index| common::transfer(200 + index, 3, 4, 5)).collect();
    assert!(client.create_transfers(&untraced).expect("untraced transfers").is_empty());
    expected.extend(untraced.iter().map(|transfer| (transfer.id.0, 0)));
    // A hold placed under one trace and posted under another.
    let hold = Transfer { flags: TransferFlags(TransferFlags::PENDING), ..common::transfer(300, 2, 3, 7) };
    let (hold_trace, post_trace) =
        (0x0af7_6519_16cd_43dd_8448_eb21_1c80_0001, 0x0af7_6519_16cd_43dd_8448_eb21_1c80_0002);
    assert!(client.create_transfers_traced(&[hold], &[hold_trace]).expect("the hold").is_empty());
    let post = Transfer {
        flags: TransferFlags(TransferFlags::POST_PENDING),
        pending_id: hold.id,
        amount: walletd_core::Amount(7),
        ..common::transfer(301, 2, 3, 7)
    };
    assert!(client.create_transfers_traced(&[post], &[post_trace]).expect("the post").is_empty());
    expected.insert(hold.id.0, hold_trace);
    expected.insert(post.id.0, post_trace);

    let mut exporter = exporter_start(dir.path(), &broker.brokers(), &[]);
    let count = expected.len() as u64;
    metric_wait(&mut exporter, "walletd_export_events_total", "every event acknowledged", |events| events >= count);
    drop(exporter);
    let partitions = topic_read(&broker.brokers(), TOPIC, PARTITIONS, Duration::from_secs(60)).expect("read");
    let schema: serde_json::Value = serde_json::from_str(SCHEMA_JSON).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    let mut seen: BTreeMap<u128, Status> = BTreeMap::new();
    for message in partitions.iter().flatten() {
        let json: serde_json::Value = serde_json::from_slice(&message.payload).expect("the payload is JSON");
        let errors: Vec<String> = validator.iter_errors(&json).map(|error| error.to_string()).collect();
        assert!(errors.is_empty(), "event {:?} is invalid: {errors:?}", message.event.position());
        let id = u128::from_str_radix(&message.key, 16).expect("the key is the hex transfer id");
        let trace_id = *expected.get(&id).unwrap_or_else(|| panic!("an event for a transfer sent: {id:032x}"));
        let wanted = (trace_id != 0).then(|| format!("{trace_id:032x}"));
        assert_eq!(message.event.trace_id, wanted, "transfer {id:032x} ({:?})", message.event.status);
        assert_eq!(json["trace_id"], wanted.map_or(serde_json::Value::Null, serde_json::Value::String));
        assert!(seen.insert(id, message.event.status).is_none(), "one event a transfer: {id:032x}");
    }
    assert_eq!(seen.len(), expected.len(), "an event for every transfer: {seen:x?}");
    assert_eq!(seen.get(&hold.id.0), Some(&Status::Pending));
    assert_eq!(seen.get(&post.id.0), Some(&Status::PendingPosted));
}
