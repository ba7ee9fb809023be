//! The notifier against a real broker and a real HTTP receiver on 127.0.0.1: events exported
//! from a journal are delivered as signed webhooks; a receiver that fails N times then
//! succeeds gets the event with the same idempotency key each time; one that always fails
//! sends the event to the dead-letter topic with its reason and the notifier moves on; a
//! poison message goes there without an attempt; a crash between delivery and commit
//! re-delivers with the same idempotency key; re-drive puts dead letters back through.
//!
//! Skipped, saying so, when no broker binary is installed (`.ci/run` installs one).

mod common;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use walletd_export::broker::Broker;
use walletd_export::exporter::{export_run, ExportOptions};
use walletd_export::metrics::{ExportMetrics, NotifyMetrics};
use walletd_export::notify::{
    idempotency_key, notify_run, redrive_run, signature, NotifyOptions, HEADER_DLQ_REASON, HEADER_IDEMPOTENCY_KEY,
    HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use walletd_export::Event;

const TOPIC: &str = "transaction.completed";
const SECRET: &[u8] = b"test-secret";

/// What the receiver got.
#[derive(Clone, Debug)]
struct Received {
    key: String,
    signature_valid: bool,
    event: Event,
}

/// How the receiver answers the `n`th request (from 0) for an idempotency key.
type Behaviour = Arc<dyn Fn(&str, usize) -> Answer + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Status(u16),
    /// Never answer (the connection stays open until the notifier goes away).
    Hang,
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let receiver = Receiver {
            addr: listener.local_addr().expect("addr"),
            received: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
        };
        let serving = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let serving = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let serving = serving.clone();
                        async move { Ok::<_, Infallible>(serving.answer(request).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        receiver
    }

    async fn answer(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            request.headers().get(name).and_then(|value| value.to_str().ok()).unwrap_or_default().to_string()
        };
        let (key, timestamp, signature_given) =
            (header(HEADER_IDEMPOTENCY_KEY), header(HEADER_TIMESTAMP), header(HEADER_SIGNATURE));
        let body = request.into_body().collect().await.expect("body").to_bytes();
        let timestamp_s: u64 = timestamp.parse().expect("a timestamp header");
        let signature_valid = signature(SECRET, timestamp_s, &body) == signature_given;
        let event: Event = serde_json::from_slice(&body).expect("the body is an event");
        let answer = {
            let mut received = self.received.lock().expect("lock");
            let n = received.iter().filter(|seen| seen.key == key).count();
            received.push(Received { key: key.clone(), signature_valid, event });
            (self.behaviour.lock().expect("lock"))(&key, n)
        };
        match answer {
            Answer::Status(status) => Response::builder()
                .status(StatusCode::from_u16(status).expect("status"))
                .body(Full::new(Bytes::new()))
                .expect("response"),
            Answer::Hang => std::future::pending().await,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    fn behave(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("lock") = behaviour;
    }
}

/// A journal with a few rounds, exported to the broker; returns its events in order.
async fn events_exported(broker: &Broker, dir: &std::path::Path, partitions: i32) -> Vec<Event> {
    common::journal_written(dir, 1, 3);
    let options = ExportOptions {
        partitions,
        fence: Duration::ZERO,
        exit_when_caught_up: true,
        ..ExportOptions::new(dir.to_path_buf(), &broker.brokers(), TOPIC)
    };
    export_run(&options, Arc::new(ExportMetrics::default())).await.expect("export");
    let mut follower = walletd_replay::Follower::open(dir, None, Default::default()).expect("follower");
    let mut events = Vec::new();
    while let Some(op) = follower.next_op().expect("op") {
        events.extend(walletd_export::events_of(&op));
    }
    events
}

fn options(broker: &Broker, receiver: &Receiver, group: &str) -> NotifyOptions {
    NotifyOptions {
        group_id: group.to_string(),
        attempts_max: 4,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        request_timeout: Duration::from_secs(30),
        ..NotifyOptions::new(&broker.brokers(), TOPIC, &receiver.url(), SECRET)
    }
}

/// Every message of a topic (all partitions) with its headers.
fn topic_messages(brokers: &str, topic: &str) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    let consumer: BaseConsumer = walletd_export::tail::tail_consumer(brokers, &[]).expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30)).expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, rdkafka::Offset::Beginning).expect("add");
    }
    consumer.assign(&list).expect("assign");
    let mut ended = std::collections::BTreeSet::new();
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended.len() < partitions as usize {
        assert!(Instant::now() < deadline, "reading {topic} took too long");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into()))
                            .collect()
                    })
                    .unwrap_or_default();
                messages.push((message.payload().unwrap_or_default().to_vec(), headers));
            }
            None => {}
        }
    }
    messages
}

fn broker_or_skip() -> Option<Broker> {
    Broker::for_test()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_delivers_and_dead_letters_what_always_fails_and_poison() {
    let Some(broker) = broker_or_skip() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let events = events_exported(&broker, dir.path(), 1).await;
    assert!(events.len() >= 5);
    let flaky = idempotency_key(&events[0]);
    let broken = idempotency_key(&events[1]);
    let receiver = Receiver::start(Arc::new({
        let (flaky, broken) = (flaky.clone(), broken.clone());
        move |key: &str, n: usize| match key {
            key if key == flaky && n < 3 => Answer::Status(503),
            key if key == broken => Answer::Status(500),
            _ => Answer::Status(200),
        }
    }))
    .await;
    // A poison message after the events.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", broker.brokers()).create().expect("producer");
    producer
        .send(FutureRecord::to(TOPIC).partition(0).key("poison").payload("{not json"), Duration::from_secs(30))
        .await
        .expect("produce the poison message");
    let metrics = Arc::new(NotifyMetrics::default());
    let options = NotifyOptions { events_max: Some(events.len() as u64 + 1), ..options(&broker, &receiver, "g1") };
    let handled = notify_run(&options, Arc::clone(&metrics)).await.expect("notify");
    assert_eq!(handled, events.len() as u64 + 1);

    let received = receiver.received();
    assert!(received.iter().all(|r| r.signature_valid), "every request is signed with the secret");
    let flaky_requests: Vec<&Received> = received.iter().filter(|r| r.key == flaky).collect();
    assert_eq!(flaky_requests.len(), 4, "three failures then the delivery, with one idempotency key");
    assert!(flaky_requests.iter().all(|r| r.event == events[0]));
    assert_eq!(received.iter().filter(|r| r.key == broken).count(), 4, "attempts_max attempts");
    for event in &events[2..] {
        assert_eq!(
            received.iter().filter(|r| r.event == *event).count(),
            1,
            "delivered once: {}",
            idempotency_key(event)
        );
    }
    assert_eq!(metrics.delivered.get(), events.len() as u64 - 1);
    assert_eq!(metrics.dead_lettered.get(), 2);

    let dead = topic_messages(&broker.brokers(), &options.dlq_topic());
    assert_eq!(dead.len(), 2, "the event that always failed and the poison message");
    let reasons: Vec<&str> = dead.iter().map(|(_, headers)| headers[HEADER_DLQ_REASON].as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("gave up after 4 attempts: the receiver answered 500")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.starts_with("not a transaction.completed event")), "{reasons:?}");
    let dead_event: Event = dead
        .iter()
        .find_map(|(payload, _)| serde_json::from_slice(payload).ok())
        .expect("the dead event is kept whole");
    assert_eq!(dead_event, events[1]);

    // The cause is fixed; re-drive, and a notifier delivers it from the retry topic.
    receiver.behave(Arc::new(|_: &str, _: usize| Answer::Status(200)));
    let moved = redrive_run(&options, Arc::clone(&metrics)).await.expect("redrive");
    assert_eq!(moved, 2);
    let options = NotifyOptions { events_max: Some(2), ..options };
    notify_run(&options, Arc::clone(&metrics)).await.expect("notify the re-driven");
    let received = receiver.received();
    assert_eq!(received.iter().filter(|r| r.key == broken).count(), 5, "re-driven and delivered");
    assert_eq!(metrics.dead_lettered.get(), 3, "the poison message is dead-lettered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_delivery_and_commit_redelivers_with_the_same_idempotency_key() {
    let Some(broker) = broker_or_skip() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let events = events_exported(&broker, dir.path(), 1).await;
    let first = idempotency_key(&events[0]);
    // The receiver takes the first request and never answers: the notifier "crashes" (its
    // task is dropped) with the event delivered but its offset not committed.
    let receiver = Receiver::start(Arc::new(|_: &str, _: usize| Answer::Hang)).await;
    let options = NotifyOptions { events_max: Some(events.len() as u64), ..options(&broker, &receiver, "g2") };
    let crashing = tokio::spawn({
        let options = options.clone();
        async move { notify_run(&options, Arc::new(NotifyMetrics::default())).await }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.received().is_empty() {
        assert!(Instant::now() < deadline, "the first delivery never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    crashing.abort();
    assert!(crashing.await.is_err(), "the notifier was cut off mid-delivery");
    receiver.behave(Arc::new(|_: &str, _: usize| Answer::Status(200)));
    let handled = notify_run(&options, Arc::new(NotifyMetrics::default())).await.expect("notify again");
    assert_eq!(handled, events.len() as u64);
    let received = receiver.received();
    let first_requests: Vec<&Received> = received.iter().filter(|r| r.key == first).collect();
    assert_eq!(first_requests.len(), 2, "delivered, crashed before the commit, re-delivered");
    assert_eq!(first_requests[0].event, first_requests[1].event);
    for event in &events[1..] {
        assert_eq!(received.iter().filter(|r| r.event == *event).count(), 1);
    }
}
