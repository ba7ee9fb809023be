//! The notifier (`walletd notify`): a consumer group on `transaction.completed` that delivers
//! each event as a signed webhook, retries with exponential backoff, and sends what it cannot
//! deliver to the dead-letter topic with the reason, then moves on.
//!
//! - **At least once, deduped by the receiver.** A partition's offset is committed only after
//!   its event was delivered (a 2xx) or dead-lettered (the DLQ producer acknowledged it), so a
//!   crash re-delivers rather than loses. Every request of one event, first try, retry or
//!   re-delivery, carries the same `Idempotency-Key` (`<transfer id>:<status>`, unique per
//!   event), which the receiver dedupes on.
//! - **Signed.** `X-Walletd-Signature: sha256=<hex HMAC-SHA256(secret, timestamp "." body)>`
//!   with `X-Walletd-Timestamp` (Unix seconds of the attempt), so a receiver checks both the
//!   sender and the freshness.
//! - **Which failures retry.** Connection errors, timeouts, 408, 429 and 5xx are retried up to
//!   `attempts_max` times with exponential backoff (`backoff_initial` doubling up to
//!   `backoff_max`); any other status is the receiver refusing the event, dead-lettered at once;
//!   a message that is not an event (it does not parse) is dead-lettered without an attempt.
//! - **Re-drive** (`walletd notify redrive`) moves the dead-letter topic's messages onto the
//!   retry topic `transaction.completed.retry`, which the notifier consumes beside the main
//!   topic. Not back onto the main topic: that topic is the exporter's, and its resume rule
//!   reads each partition's last message, which must be the exporter's own.
//!
//! Events are handled one at a time in the order the consumer yields them (per partition,
//! in offset order); a receiver that is down holds up only this consumer, never the engine or
//! the exporter.

use crate::error::ExportError;
use crate::event::Event;
use crate::metrics::{metrics_serve, NotifyMetrics};
use hmac::{Hmac, Mac};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const DLQ_SUFFIX: &str = ".dlq";
pub const RETRY_SUFFIX: &str = ".retry";
pub const HEADER_SIGNATURE: &str = "X-Walletd-Signature";
pub const HEADER_TIMESTAMP: &str = "X-Walletd-Timestamp";
pub const HEADER_IDEMPOTENCY_KEY: &str = "Idempotency-Key";
pub const HEADER_DLQ_REASON: &str = "walletd-dlq-reason";
pub const HEADER_DLQ_SOURCE: &str = "walletd-dlq-source";
pub const HEADER_DLQ_ATTEMPTS: &str = "walletd-dlq-attempts";

#[derive(Clone, Debug)]
pub struct NotifyOptions {
    pub brokers: String,
    /// The events' topic; the dead-letter and retry topics are named after it.
    pub topic: String,
    pub group_id: String,
    pub webhook_url: String,
    /// The HMAC key for the signature header.
    pub secret: Vec<u8>,
    /// Attempts per event before it is dead-lettered (at least 1).
    pub attempts_max: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// One webhook request, connect to last byte.
    pub request_timeout: Duration,
    pub metrics_addr: Option<SocketAddr>,
    /// Stop once this many events were handled (tests); None: run until a signal.
    pub events_max: Option<u64>,
}

impl NotifyOptions {
    pub fn new(brokers: &str, topic: &str, webhook_url: &str, secret: &[u8]) -> NotifyOptions {
        NotifyOptions {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            group_id: "walletd-notify".to_string(),
            webhook_url: webhook_url.to_string(),
            secret: secret.to_vec(),
            attempts_max: 8,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            metrics_addr: None,
            events_max: None,
        }
    }

    pub fn dlq_topic(&self) -> String {
        format!("{}{DLQ_SUFFIX}", self.topic)
    }

    pub fn retry_topic(&self) -> String {
        format!("{}{RETRY_SUFFIX}", self.topic)
    }
}

/// What became of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    Delivered { attempts: u32 },
    DeadLettered { reason: String },
}

/// HMAC-SHA256 of `timestamp "." body`, hex, as the signature header carries it.
pub fn signature(secret: &[u8], timestamp_s: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 2 * bytes.len());
    hex.push_str("sha256=");
    for byte in bytes {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The idempotency key of an event: unique per event, the same on every attempt.
pub fn idempotency_key(event: &Event) -> String {
    let status = serde_json::to_value(event.status).expect("a status serialises");
    format!("{}:{}", event.id, status.as_str().expect("a status is a string"))
}

/// The delay before retry `attempt` (1 = the first retry).
pub fn backoff(options: &NotifyOptions, attempt: u32) -> Duration {
    assert!(attempt >= 1);
    let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
    options.backoff_initial.saturating_mul(factor).min(options.backoff_max)
}

/// Runs the notifier on its own runtime until a signal or `events_max`.
pub fn notify(options: &NotifyOptions) -> Result<u64, ExportError> {
    runtime()?.block_on(notify_run(options, Arc::new(NotifyMetrics::default())))
}

fn runtime() -> Result<tokio::runtime::Runtime, ExportError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("notify")
        .enable_all()
        .build()
        .map_err(ExportError::io("starting the runtime"))
}

pub async fn notify_run(options: &NotifyOptions, metrics: Arc<NotifyMetrics>) -> Result<u64, ExportError> {
    if options.attempts_max < 1 {
        return Err(ExportError::Option("--attempts must be at least 1".into()));
    }
    if let Some(addr) = options.metrics_addr {
        let render_metrics = Arc::clone(&metrics);
        metrics_serve(addr, Arc::new(move || render_metrics.render())).await?;
    }
    let partitions = topics_ensure(options).await?;
    tracing::info!(topic = %options.topic, partitions, group = %options.group_id, "notifier starting");
    let consumer = consumer_create(&options.brokers, &options.group_id)?;
    consumer.subscribe(&[&options.topic, &options.retry_topic()]).map_err(ExportError::kafka("subscribing"))?;
    let producer = dlq_producer(&options.brokers)?;
    let http = reqwest::Client::builder()
        .timeout(options.request_timeout)
        .build()
        .map_err(|error| ExportError::Option(format!("the webhook client: {error}")))?;
    let notifier = Notifier { options, http, producer, metrics };
    let mut handled = 0u64;
    while options.events_max.is_none_or(|max| handled < max) {
        let message = tokio::select! {
            message = consumer.recv() => message.map_err(ExportError::kafka("consuming"))?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let outcome = notifier.handle(&message).await?;
        tracing::debug!(partition = message.partition(), offset = message.offset(), ?outcome, "handled");
        commit_after(&consumer, &message)?;
        handled += 1;
    }
    Ok(handled)
}

/// Commits the offset after `message`: it was delivered or dead-lettered.
fn commit_after(consumer: &StreamConsumer, message: &BorrowedMessage<'_>) -> Result<(), ExportError> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(message.topic(), message.partition(), Offset::Offset(message.offset() + 1))
        .map_err(ExportError::kafka("the offset to commit"))?;
    consumer.commit(&list, CommitMode::Sync).map_err(ExportError::kafka("committing the offset"))
}

fn consumer_create(brokers: &str, group_id: &str) -> Result<StreamConsumer, ExportError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .create()
        .map_err(ExportError::kafka("creating the consumer"))
}

fn dlq_producer(brokers: &str) -> Result<FutureProducer, ExportError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "walletd-notify")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .map_err(ExportError::kafka("creating the dead-letter producer"))
}

/// Creates the dead-letter and retry topics if missing, with the main topic's partition count.
async fn topics_ensure(options: &NotifyOptions) -> Result<i32, ExportError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .create()
        .map_err(ExportError::kafka("creating the admin client"))?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&options.topic), options.request_timeout)
        .map_err(ExportError::kafka("reading the topic's metadata"))?;
    let partitions = metadata.topics().first().map_or(0, |topic| topic.partitions().len()) as i32;
    let partitions = partitions.max(1);
    let (dlq, retry) = (options.dlq_topic(), options.retry_topic());
    let topics = [
        NewTopic::new(&dlq, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&retry, partitions, TopicReplication::Fixed(1)),
    ];
    let results = admin
        .create_topics(&topics, &AdminOptions::new().request_timeout(Some(options.request_timeout)))
        .await
        .map_err(ExportError::kafka("creating the dead-letter and retry topics"))?;
    for result in results {
        if let Err((name, code)) = result {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(ExportError::Topic {
                    topic: name,
                    partition: -1,
                    reason: format!("cannot be created: {code}"),
                });
            }
        }
    }
    Ok(partitions)
}

struct Notifier<'a> {
    options: &'a NotifyOptions,
    http: reqwest::Client,
    producer: FutureProducer,
    metrics: Arc<NotifyMetrics>,
}

/// One attempt's failure.
enum Failure {
    /// Worth another attempt (connection, timeout, 408, 429, 5xx).
    Transient(String),
    /// The receiver refused the event.
    Refused(String),
}

impl Notifier<'_> {
    async fn handle(&self, message: &BorrowedMessage<'_>) -> Result<Handled, ExportError> {
        let payload = message.payload().unwrap_or_default();
        let event: Event = match serde_json::from_slice(payload) {
            Ok(event) => event,
            Err(error) => {
                let reason = format!("not a transaction.completed event: {error}");
                return self.dead_letter(message, &reason, 0).await;
            }
        };
        let key = idempotency_key(&event);
        let mut last_failure = String::new();
        for attempt in 1..=self.options.attempts_max {
            if attempt > 1 {
                self.metrics.retries.add(1);
                tokio::time::sleep(backoff(self.options, attempt - 1)).await;
            }
            self.metrics.attempts.add(1);
            match self.post(payload, &key).await {
                Ok(()) => {
                    self.metrics.delivered.add(1);
                    return Ok(Handled::Delivered { attempts: attempt });
                }
                Err(Failure::Refused(reason)) => return self.dead_letter(message, &reason, attempt).await,
                Err(Failure::Transient(reason)) => {
                    tracing::warn!(%key, attempt, %reason, "webhook attempt failed");
                    last_failure = reason;
                }
            }
        }
        let reason = format!("gave up after {} attempts: {last_failure}", self.options.attempts_max);
        self.dead_letter(message, &reason, self.options.attempts_max).await
    }

    async fn post(&self, body: &[u8], key: &str) -> Result<(), Failure> {
        let timestamp_s = crate::metrics::now_ns() / 1_000_000_000;
        let response = self
            .http
            .post(&self.options.webhook_url)
            .header("content-type", "application/json")
            .header(HEADER_IDEMPOTENCY_KEY, key)
            .header(HEADER_TIMESTAMP, timestamp_s.to_string())
            .header(HEADER_SIGNATURE, signature(&self.options.secret, timestamp_s, body))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|error| Failure::Transient(format!("request failed: {error}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let reason = format!("the receiver answered {status}");
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(Failure::Transient(reason))
        } else {
            Err(Failure::Refused(reason))
        }
    }

    /// Sends the message, its headers and the reason to the dead-letter topic, and waits for
    /// the broker's acknowledgement.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        attempts: u32,
    ) -> Result<Handled, ExportError> {
        tracing::warn!(partition = message.partition(), offset = message.offset(), %reason, "dead-lettered");
        let source = format!("{}/{}@{}", message.topic(), message.partition(), message.offset());
        let attempts = attempts.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: HEADER_DLQ_REASON, value: Some(reason) })
            .insert(Header { key: HEADER_DLQ_SOURCE, value: Some(source.as_str()) })
            .insert(Header { key: HEADER_DLQ_ATTEMPTS, value: Some(attempts.as_str()) });
        if let Some(original) = message.headers() {
            for header in original.iter().filter(|header| !header.key.starts_with("walletd-dlq-")) {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        let dlq = self.options.dlq_topic();
        let mut record = FutureRecord::to(&dlq).partition(message.partition()).headers(headers);
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(60))
            .await
            .map_err(|(error, _)| ExportError::kafka("writing to the dead-letter topic")(error))?;
        self.metrics.dead_lettered.add(1);
        Ok(Handled::DeadLettered { reason: reason.to_string() })
    }
}

/// Moves every message of the dead-letter topic present when it starts onto the retry topic,
/// committing the re-drive group's offset after each is acknowledged; returns how many.
pub fn redrive(options: &NotifyOptions) -> Result<u64, ExportError> {
    runtime()?.block_on(redrive_run(options, Arc::new(NotifyMetrics::default())))
}

pub async fn redrive_run(options: &NotifyOptions, metrics: Arc<NotifyMetrics>) -> Result<u64, ExportError> {
    let (dlq, retry) = (options.dlq_topic(), options.retry_topic());
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", format!("{}-redrive", options.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50")
        .create()
        .map_err(ExportError::kafka("creating the re-drive consumer"))?;
    let metadata = consumer
        .fetch_metadata(Some(&dlq), options.request_timeout)
        .map_err(ExportError::kafka("reading the dead-letter topic's metadata"))?;
    let partitions = metadata.topics().first().map_or(0, |topic| topic.partitions().len());
    consumer.subscribe(&[&dlq]).map_err(ExportError::kafka("subscribing to the dead-letter topic"))?;
    let producer = dlq_producer(&options.brokers)?;
    let mut ended = std::collections::BTreeSet::new();
    let mut moved = 0u64;
    while ended.len() < partitions {
        let message = match tokio::time::timeout(options.request_timeout, consumer.recv()).await {
            Err(_) => return Err(ExportError::Timeout(format!("reading {dlq}"))),
            Ok(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
                continue;
            }
            Ok(Err(error)) => return Err(ExportError::kafka("reading the dead-letter topic")(error)),
            Ok(Ok(message)) => message,
        };
        ended.remove(&message.partition());
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter().filter(|header| !header.key.starts_with("walletd-dlq-")) {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        let mut record = FutureRecord::to(&retry).partition(message.partition()).headers(headers);
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(60))
            .await
            .map_err(|(error, _)| ExportError::kafka("writing to the retry topic")(error))?;
        commit_after(&consumer, &message)?;
        metrics.redriven.add(1);
        moved += 1;
    }
    tracing::info!(moved, from = %dlq, to = %retry, "re-driven");
    Ok(moved)
}
