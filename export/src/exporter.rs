//! The exporter: the follower on its own thread (it blocks on the data directory) turns each
//! durable op into events and hands them, one op at a time through a bounded channel, to the
//! idempotent producer on the tokio side, which publishes them keyed by transfer id and
//! tracks which op the broker has acknowledged everything through.
//!
//! # Exactly once, without Kafka transactions
//!
//! Every event has a position `(op, index)`, a pure function of the journal that increases in
//! the order events happen, and a fixed partition (`partition_of` its key). Write `E_p` for the
//! events of partition `p` in position order. The invariant is: **each partition holds a
//! prefix of its `E_p`, each event once, in order.** Every message also carries the header
//! `walletd-acked-through: OP:CHECKSUM`, the exporter's acknowledged position when it sent the
//! message: every event of every op up to `OP` was already acknowledged by the broker.
//!
//! - *Within a session* the invariant holds because the producer is idempotent with
//!   `enable.gapless.guarantee` and no local message timeout: the broker dedupes retries by
//!   producer id and sequence, refuses out-of-order sequences, and any failure that could leave
//!   a gap is fatal, after which the session sends nothing more (the process exits and is
//!   restarted).
//! - *On start* the exporter reads each partition's last message (`tail.rs`): the position
//!   `last_p` of its event, and its header. It resumes the follower after `S`, the greatest
//!   acknowledged-through position over all partitions (every event of ops up to `S` is in
//!   the topic), and then sends an event of partition `p` only if its position is greater than
//!   `last_p`. By the invariant, partition `p` holds exactly the events of `E_p` up to `last_p`,
//!   so what it sends is exactly the rest of `E_p`, in order: the invariant holds again.
//! - Positions name one history: the follower refuses an `S` whose checksum is not the
//!   journal's at `S.op`, and an op with a partition's last event must have that event's
//!   checksum, so a topic written from another journal is refused rather than continued.
//!
//! What this rests on, and the operator's side of it (docs/EVENTS.md in full): one exporter
//! per topic at a time (enforced on one machine by the lock file, `lock_take`); a broker that
//! keeps what it acknowledged and each partition's last message; and the previous session's
//! produce requests finished at the broker before the new session reads the ends, which the
//! start-up fence (`--fence-ms`) waits for — an assumption, whose failure the per-partition
//! offset check of every delivery (`Session::offset_check`) turns into a stop, not a duplicate
//! left unnoticed.

use crate::encode::{op_records_encode, OpRecords, Record};
use crate::error::ExportError;
use crate::event::EventPosition;
use crate::metrics::{metrics_serve, ExportMetrics};
use crate::tail::{tails_read, Tail, HEADER_ACKED_THROUGH, HEADER_POSITION};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use walletd_replay::{FollowOptions, Follower, Position};

/// Ops handed from the follower to the producer and not yet sent (the channel's bound).
const CHANNEL_OPS_MAX: usize = 16;
/// Messages awaited at once; the producer's own queue bounds it too.
const INFLIGHT_MAX: usize = 400_000;

#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub data_dir: PathBuf,
    pub brokers: String,
    pub topic: String,
    /// The topic is created with this many partitions, or must already have them.
    pub partitions: i32,
    pub replication_factor: i32,
    pub metrics_addr: Option<SocketAddr>,
    /// Wait before reading the partitions' ends, for a killed session's requests to finish.
    pub fence: Duration,
    /// Exit once every durable op is exported (an offline export, or a test).
    pub exit_when_caught_up: bool,
    /// Extra librdkafka properties for the producer (`-X key=value`), over the defaults.
    pub producer_config: Vec<(String, String)>,
    /// How long start-up requests (metadata, topic creation, the ends) may take.
    pub request_timeout: Duration,
    /// The lock that keeps a second exporter of this topic off; None: `export.TOPIC.lock` in
    /// the data directory.
    pub lock_path: Option<PathBuf>,
}

impl ExportOptions {
    pub fn new(data_dir: PathBuf, brokers: &str, topic: &str) -> ExportOptions {
        ExportOptions {
            data_dir,
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            partitions: 32,
            replication_factor: 1,
            metrics_addr: None,
            fence: Duration::from_secs(2),
            exit_when_caught_up: false,
            producer_config: Vec::new(),
            request_timeout: Duration::from_secs(30),
            lock_path: None,
        }
    }

    /// Where the exporter's lock file is.
    pub fn lock_file(&self) -> PathBuf {
        self.lock_path.clone().unwrap_or_else(|| self.data_dir.join(format!("export.{}.lock", self.topic)))
    }
}

/// What a session did.
#[derive(Clone, Debug, Default)]
pub struct ExportReport {
    /// Where the follower resumed (None: from the start of the journal).
    pub resumed_after: Option<Position>,
    pub events_exported: u64,
    pub events_skipped: u64,
    /// Every event through this op is acknowledged.
    pub acked_through: Position,
}

/// Runs the exporter on its own runtime until caught up (`exit_when_caught_up`), a signal, or
/// an error.
pub fn export_kafka(options: &ExportOptions) -> Result<ExportReport, ExportError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("export")
        .enable_all()
        .build()
        .map_err(ExportError::io("starting the runtime"))?;
    runtime.block_on(export_run(options, Arc::new(ExportMetrics::default())))
}

pub async fn export_run(options: &ExportOptions, metrics: Arc<ExportMetrics>) -> Result<ExportReport, ExportError> {
    let _ = metrics.durable_dir.set(options.data_dir.clone());
    if options.partitions < 1 {
        return Err(ExportError::Option(format!("--partitions {} must be at least 1", options.partitions)));
    }
    if let Some((key, _)) = options.producer_config.iter().find(|(key, _)| key.starts_with("compression.")) {
        return Err(ExportError::Option(format!(
            "-X {key}: the exporter writes uncompressed batches, which its start-up reads back"
        )));
    }
    if let Some(addr) = options.metrics_addr {
        let render_metrics = Arc::clone(&metrics);
        let bound = metrics_serve(addr, Arc::new(move || render_metrics.render())).await?;
        tracing::info!(%bound, "metrics at /metrics");
    }
    metrics.sessions.add(1);
    let _lock = lock_take(&options.lock_file())?;
    let leaders = topic_ensure(options).await?;
    // The broker side of "one writer at a time": a killed session's requests that the broker
    // had already received are given this long to be written before the ends are read (the
    // end-reading and the first deliveries check that nothing moves afterwards).
    tokio::time::sleep(options.fence).await;
    let ends = {
        let (topic, timeout) = (options.topic.clone(), options.request_timeout);
        tokio::task::spawn_blocking(move || tails_read(&leaders, &topic, timeout))
            .await
            .expect("the tail reader does not panic")?
    };
    let offsets_next: Vec<i64> = ends.iter().map(|end| end.high_watermark).collect();
    let tails: Vec<Option<Tail>> = ends.into_iter().map(|end| end.tail).collect();
    let resumed_after = tails.iter().flatten().map(|tail| tail.acked_through).max_by_key(|position| position.op);
    tracing::info!(
        resumed_after = %resumed_after.map_or("the start".to_string(), |p| p.to_string()),
        partitions_written = tails.iter().flatten().count(),
        "resuming"
    );
    let (delivery_sender, deliveries) = mpsc::unbounded_channel();
    let producer = producer_create(options, DeliveryContext { sender: delivery_sender })?;
    let (sender, receiver) = mpsc::channel(CHANNEL_OPS_MAX);
    // Sent ops' buffers go back to the follower to be written again.
    let (spare_sender, spare_receiver) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let follower_thread = std::thread::Builder::new()
        .name("export-follow".into())
        .spawn({
            let follow = FollowTask {
                dir: options.data_dir.clone(),
                after: resumed_after,
                tails,
                partitions: options.partitions,
                exit_when_caught_up: options.exit_when_caught_up,
                stop: Arc::clone(&stop),
                metrics: Arc::clone(&metrics),
            };
            move || follow.run(sender, spare_receiver)
        })
        .map_err(ExportError::io("starting the follower thread"))?;
    let mut session = Session {
        producer,
        topic: options.topic.clone(),
        deliveries,
        ops: VecDeque::new(),
        op_index_front: 0,
        messages_outstanding: 0,
        acked: resumed_after.unwrap_or_default(),
        acked_header: resumed_after.unwrap_or_default().to_string(),
        metrics: Arc::clone(&metrics),
        exported: 0,
        offsets_next,
        spare: spare_sender,
    };
    let result = session.run(receiver).await;
    stop.store(true, Ordering::Release);
    let follow_result = follower_thread.join().expect("the follower thread does not panic");
    result?;
    follow_result?;
    let report = ExportReport {
        resumed_after,
        events_exported: session.exported,
        events_skipped: metrics.events_skipped.get(),
        acked_through: session.acked,
    };
    tracing::info!(?report, "exporter stopped");
    Ok(report)
}

/// The producer: idempotent, acks from all replicas, no local timeout (a broker that is down
/// makes the exporter wait, with the journal as the buffer), and gaps fatal.
fn producer_create(
    options: &ExportOptions,
    context: DeliveryContext,
) -> Result<ThreadedProducer<DeliveryContext>, ExportError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.brokers)
        .set("client.id", "walletd-export")
        .set("enable.idempotence", "true")
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("batch.size", "4000000")
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "1048576");
    for (key, value) in &options.producer_config {
        config.set(key, value);
    }
    ThreadedProducer::from_config_and_context(&config, context).map_err(ExportError::kafka("creating the producer"))
}

/// Where a message landed (partition, offset), or why it did not, reported by librdkafka's
/// polling thread with the index of the op the message belongs to (the delivery opaque: a
/// number, so a message costs no allocation of ours to track).
struct Delivery {
    op_index: usize,
    result: Result<(i32, i64), KafkaError>,
}

/// Hands each delivery report to the session, in the order librdkafka reports them (within a
/// partition, the order the messages were sent: the offset check relies on it and stops the
/// session if it ever does not hold).
struct DeliveryContext {
    sender: mpsc::UnboundedSender<Delivery>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, op_index: usize) {
        let result = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.clone()),
        };
        // The session stopped (it reports why); later reports have no one to tell.
        let _ = self.sender.send(Delivery { op_index, result });
    }
}

/// Creates the topic with `partitions`, or checks that it has them: the partition of an event
/// is part of the resume rule, so the count cannot change under an exporter. Returns each
/// partition's leader (`host:port`), which answers the reads of its end.
async fn topic_ensure(options: &ExportOptions) -> Result<Vec<String>, ExportError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .create()
        .map_err(ExportError::kafka("creating the admin client"))?;
    let topic = NewTopic::new(&options.topic, options.partitions, TopicReplication::Fixed(options.replication_factor));
    let admin_options = AdminOptions::new().request_timeout(Some(options.request_timeout));
    let results =
        admin.create_topics([&topic], &admin_options).await.map_err(ExportError::kafka("creating the topic"))?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(topic = %options.topic, partitions = options.partitions, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(ExportError::Topic {
                    topic: name,
                    partition: -1,
                    reason: format!("cannot be created: {code}"),
                })
            }
        }
    }
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&options.topic), options.request_timeout)
        .map_err(ExportError::kafka("reading the topic's metadata"))?;
    let count = metadata.topics().first().map_or(0, |topic| topic.partitions().len());
    if count != options.partitions as usize {
        return Err(ExportError::Topic {
            topic: options.topic.clone(),
            partition: -1,
            reason: format!("it has {count} partitions, the exporter was given --partitions {}", options.partitions),
        });
    }
    let mut partitions: Vec<_> = metadata.topics()[0].partitions().iter().collect();
    partitions.sort_by_key(|partition| partition.id());
    let mut leaders = Vec::with_capacity(partitions.len());
    for (index, partition) in partitions.iter().enumerate() {
        let leader = metadata.brokers().iter().find(|broker| broker.id() == partition.leader());
        match leader {
            Some(broker) if partition.id() == index as i32 => {
                leaders.push(format!("{}:{}", broker.host(), broker.port()))
            }
            _ => {
                return Err(ExportError::Topic {
                    topic: options.topic.clone(),
                    partition: index as i32,
                    reason: format!("no leader known for it (leader id {})", partition.leader()),
                })
            }
        }
    }
    assert_eq!(leaders.len(), options.partitions as usize, "one leader a partition");
    Ok(leaders)
}

/// The exclusive lock of one exporter per topic and data directory: taken with `flock`, so the
/// kernel releases it when the process dies, even by SIGKILL, and a second exporter started
/// meanwhile is refused rather than writing beside the first.
fn lock_take(path: &std::path::Path) -> Result<std::fs::File, ExportError> {
    use std::os::fd::AsRawFd;
    let context = || format!("the exporter's lock file {}", path.display());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(ExportError::io(context()))?;
    // SAFETY: the descriptor is owned by `file`, which is live for the call.
    let code = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if code != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::WouldBlock {
            return Err(ExportError::Option(format!(
                "another exporter holds {}: one exporter per topic at a time",
                path.display()
            )));
        }
        return Err(ExportError::io(context())(error));
    }
    Ok(file)
}

enum FollowItem {
    /// One op's messages, in position order.
    Op(OpRecords),
    /// Caught up with the durable journal, and told to exit then.
    CaughtUp,
}

/// The follower's side: ops to events, skipping what a previous session already wrote.
struct FollowTask {
    dir: PathBuf,
    after: Option<Position>,
    tails: Vec<Option<Tail>>,
    partitions: i32,
    exit_when_caught_up: bool,
    stop: Arc<AtomicBool>,
    metrics: Arc<ExportMetrics>,
}

impl FollowTask {
    fn run(
        self,
        sender: mpsc::Sender<FollowItem>,
        spare: std::sync::mpsc::Receiver<OpRecords>,
    ) -> Result<(), ExportError> {
        let mut follower = Follower::open(&self.dir, self.after, FollowOptions::default())?;
        while !self.stop.load(Ordering::Acquire) {
            let Some(op) = follower.next_op()? else {
                self.metrics.op_durable.set(follower.position().op.max(self.metrics.op_durable.get()));
                if self.exit_when_caught_up {
                    let _ = sender.blocking_send(FollowItem::CaughtUp);
                    return Ok(());
                }
                follower.wait(Duration::from_millis(100))?;
                continue;
            };
            let op_number = op.op;
            let mut records = spare.try_recv().unwrap_or_default();
            self.records_encode(&op, &mut records)?;
            self.metrics.op_followed.set(op_number);
            let durable = follower.op_durable();
            self.metrics.op_durable.set(if durable == u64::MAX { op_number } else { durable });
            if sender.blocking_send(FollowItem::Op(records)).is_err() {
                return Ok(()); // the producer side stopped; it reports why
            }
        }
        Ok(())
    }

    /// The op's records, leaving out what a partition already holds (its tail and before).
    fn records_encode(&self, op: &walletd_replay::Op<'_>, records: &mut OpRecords) -> Result<(), ExportError> {
        let mut admit = |partition: i32, position: EventPosition| {
            let Some(tail) = &self.tails[partition as usize] else {
                return Ok(true);
            };
            if tail.last.op == op.op && tail.last_checksum != op.checksum {
                return Err(ExportError::Topic {
                    topic: String::new(),
                    partition,
                    reason: format!(
                        "its last event is of op {} with checksum {:032x}, the journal's op has {:032x}",
                        op.op, tail.last_checksum, op.checksum
                    ),
                });
            }
            Ok(position > tail.last)
        };
        op_records_encode(op, self.partitions, &mut admit, records)?;
        self.metrics.events_skipped.add(records.skipped);
        Ok(())
    }
}

/// An op whose messages are sent and not all acknowledged.
struct OpPending {
    position: Position,
    timestamp_ns: u64,
    messages_outstanding: usize,
    /// Every message of the op was handed to the producer: until then, deliveries that bring
    /// `messages_outstanding` to 0 (while the producer's queue is full) do not finish it.
    sent_all: bool,
}

/// The producer's side: sends in order; an op is acknowledged once every message of it and of
/// every op before it is.
struct Session {
    producer: ThreadedProducer<DeliveryContext>,
    topic: String,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// Sent ops not yet acknowledged, in op order; the front is op index `op_index_front`.
    ops: VecDeque<OpPending>,
    op_index_front: usize,
    messages_outstanding: usize,
    acked: Position,
    acked_header: String,
    metrics: Arc<ExportMetrics>,
    exported: u64,
    /// Per partition, the offset this session's next message must land at: this session is the
    /// topic's only writer, so its messages follow the end it read, one after another.
    offsets_next: Vec<i64>,
    /// Where a sent op's buffers go back to the follower.
    spare: std::sync::mpsc::Sender<OpRecords>,
}

impl Session {
    async fn run(&mut self, mut receiver: mpsc::Receiver<FollowItem>) -> Result<(), ExportError> {
        let mut progress = tokio::time::interval(Duration::from_secs(5));
        let mut following = true;
        let terminate = signal_terminate();
        tokio::pin!(terminate);
        while following || !self.ops.is_empty() {
            tokio::select! {
                biased;
                Some(delivery) = self.deliveries.recv(), if !self.ops.is_empty() => self.delivered(delivery)?,
                item = receiver.recv(), if following && self.messages_outstanding < INFLIGHT_MAX => match item {
                    Some(FollowItem::Op(records)) => self.chunk_send(records).await?,
                    Some(FollowItem::CaughtUp) | None => following = false,
                },
                _ = &mut terminate, if following => {
                    tracing::info!("stopping: delivering what was sent");
                    following = false;
                }
                _ = progress.tick() => tracing::info!(
                    op_exported = self.acked.op,
                    lag_ops = self.metrics.lag_ops(),
                    events = self.exported,
                    "export progress"
                ),
            }
        }
        Ok(())
    }

    fn delivered(&mut self, delivery: Delivery) -> Result<(), ExportError> {
        let (partition, offset) = delivery.result.map_err(ExportError::kafka("a delivery failed; stopping"))?;
        self.offset_check(partition, offset)?;
        self.exported += 1;
        self.metrics.events_exported.add(1);
        assert!(delivery.op_index >= self.op_index_front, "a delivery of an op already acknowledged");
        let op = &mut self.ops[delivery.op_index - self.op_index_front];
        assert!(op.messages_outstanding > 0, "one delivery a message");
        op.messages_outstanding -= 1;
        self.messages_outstanding -= 1;
        self.acks_advance();
        Ok(())
    }

    /// Acknowledges the ops at the front whose messages are all delivered.
    fn acks_advance(&mut self) {
        while self.ops.front().is_some_and(|op| op.sent_all && op.messages_outstanding == 0) {
            let op = self.ops.pop_front().expect("a front op");
            assert!(op.position.op > self.acked.op, "ops are acknowledged in order");
            self.op_index_front += 1;
            self.acked = op.position;
            self.acked_header = op.position.to_string();
            self.metrics.op_exported.set(op.position.op);
            self.metrics.op_exported_timestamp_ns.set(op.timestamp_ns);
        }
    }

    /// A delivered message must sit right after the previous one of its partition; anything
    /// else means something else wrote there since the end was read (a second exporter, or a
    /// killed session's request that the broker wrote after the fence), and exactly-once is
    /// already lost: stop loudly rather than go on. A retry the broker recognised as already
    /// written is reported without an offset (-1) and only counted.
    fn offset_check(&mut self, partition: i32, offset: i64) -> Result<(), ExportError> {
        let expected = &mut self.offsets_next[partition as usize];
        if offset >= 0 && offset != *expected {
            return Err(ExportError::Topic {
                topic: self.topic.clone(),
                partition,
                reason: format!(
                    "a message landed at offset {offset}, after this session's previous at {}: \
                     another writer, or a killed exporter's late request (see --fence-ms)",
                    *expected - 1
                ),
            });
        }
        *expected += 1;
        Ok(())
    }

    async fn chunk_send(&mut self, records: OpRecords) -> Result<(), ExportError> {
        let op_index = self.op_index_front + self.ops.len();
        let (position, timestamp_ns) = (records.position, records.timestamp_ns);
        let pending = OpPending { position, timestamp_ns, messages_outstanding: 0, sent_all: false };
        self.ops.push_back(pending);
        for record in records.records() {
            self.message_send(&records, record, op_index).await?;
        }
        self.ops.back_mut().expect("the op just pushed").sent_all = true;
        // An op without messages (or whose messages were all delivered meanwhile) is done now.
        self.acks_advance();
        // The follower may have stopped; then the buffers are simply dropped.
        let _ = self.spare.send(records);
        Ok(())
    }

    /// Hands one message to the producer, waiting for deliveries while its queue is full.
    async fn message_send(&mut self, records: &OpRecords, record: &Record, op_index: usize) -> Result<(), ExportError> {
        loop {
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header { key: HEADER_ACKED_THROUGH, value: Some(self.acked_header.as_bytes()) })
                .insert(Header { key: HEADER_POSITION, value: Some(records.position_header(record)) });
            let record_out = BaseRecord::with_opaque_to(&self.topic, op_index)
                .partition(record.partition)
                .key(records.key(record))
                .payload(records.payload(record))
                .headers(headers);
            match self.producer.send(record_out) {
                Ok(()) => {
                    let slot = op_index - self.op_index_front;
                    self.ops[slot].messages_outstanding += 1;
                    self.messages_outstanding += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    match self.deliveries.recv().await {
                        Some(delivery) => self.delivered(delivery)?,
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((error, _)) => return Err(ExportError::kafka("handing a message to the producer")(error)),
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn signal_terminate() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
