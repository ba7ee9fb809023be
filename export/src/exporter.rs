//! The exporter: the follower on its own thread (it blocks on the data directory) turns each
//! durable op into events and writes them straight into Produce requests (`produce.rs`: one
//! record batch per partition, one request per broker, many ops a request), which it hands
//! through a bounded channel to the session on the tokio side; the session writes them to the
//! broker, a bounded number in flight, checks every answer, and tracks which op the broker has
//! acknowledged everything through.
//!
//! # Exactly once, without Kafka transactions
//!
//! Every event has a position `(op, index)`, a pure function of the journal that increases in
//! the order events happen, and a fixed partition (`partition_of` its key). Write `E_p` for the
//! events of partition `p` in position order. The invariant is: **each partition holds a
//! prefix of its `E_p`, each event once, in order.** Every message also carries the header
//! `walletd-acked-through: OP:CHECKSUM`, an acknowledged position of the exporter's when it
//! built the message: every event of every op up to `OP` was already acknowledged by the broker.
//!
//! - *On start* the exporter reads each partition's last message (`tail.rs`): the position
//!   `last_p` of its event, and its header. It resumes the follower after `S`, the greatest
//!   acknowledged-through position over all partitions (every event of ops up to `S` is in
//!   the topic), and then sends an event of partition `p` only if its position is greater than
//!   `last_p`. By the invariant, partition `p` holds exactly the events of `E_p` up to `last_p`,
//!   so what it sends is exactly the rest of `E_p`, in order: the invariant holds again.
//! - *Within a process* the exporter keeps one producer id (InitProducerId) and numbers the
//!   records it sends to partition `p` from 0 with that id: record `E_p[h_p + s]` has sequence
//!   `s`, where `h_p` is the partition's end when the id was taken. The broker writes a batch
//!   only if its base sequence is the next it expects for that id and partition, so every
//!   batch of this id that it writes continues the partition with exactly the next events of
//!   `E_p`, whichever connection or attempt it came from, and a resent or late batch whose
//!   sequences are already written is refused (`DUPLICATE_SEQUENCE_NUMBER`), never written
//!   twice. The invariant holds whatever the broker receives from this process.
//! - *On any error or uncertainty* (a broken connection, a timeout, an error code) the session
//!   does not guess what reached the broker: it drops its connections and ends, and a new
//!   session reads the ends again and resumes by the rule above, with the same producer id
//!   and each partition's sequence where its end now is. A request of the old session that
//!   the broker writes after the ends were read is harmless by the previous point (the new
//!   session's batch of the same sequences is then refused, and the session after it reads
//!   the ends again).
//! - Positions name one history: the follower refuses an `S` whose checksum is not the
//!   journal's at `S.op`, and an op with a partition's last event must have that event's
//!   checksum, so a topic written from another journal is refused rather than continued.
//!
//! What this rests on, and the operator's side of it (docs/EVENTS.md in full): one exporter
//! per topic at a time (enforced on one machine by the lock file, `lock_take`); a broker that
//! keeps what it acknowledged, each partition's last message and its producers' sequences; and
//! a killed *process's* produce requests finished at the broker before a new process reads the
//! ends (its producer id is another, so sequences do not protect against it), which the
//! start-up fence (`--fence-ms`) waits for — an assumption, whose failure the check of every
//! answer's base offset (`Session::batch_answered`) turns into a stop, not a duplicate left
//! unnoticed.

use crate::encode::{op_records_encode, OpRecords};
use crate::error::ExportError;
use crate::event::EventPosition;
use crate::metrics::{metrics_serve, ExportMetrics};
use crate::produce::{
    answers_match, error_is_producer_lost, error_name, init_producer_id_request, init_producer_id_response_decode,
    produce_response_decode, response_size, BatchSent, PartitionAnswer, ProducerId, Request, RequestBuffers,
    RequestBuilder,
};
use crate::tail::{tails_read, PartitionEnd, Tail, HEADER_ACKED_THROUGH, HEADER_POSITION};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use walletd_replay::{FollowOptions, Follower, Position};

/// Connections to one broker, at most.
const CONNECTIONS_MAX: usize = 16;
/// Chunks built by the follower and not yet sent (the channel's bound).
const CHANNEL_CHUNKS_MAX: usize = 2;
/// A partition's sequence numbers are i32 and may not wrap: past this many records of one
/// producer id in one partition the session ends, with everything acknowledged, and the next
/// takes a new id (with no request in flight, it needs no fence).
const SEQUENCE_RENEW_AT: i64 = i32::MAX as i64 - (1 << 20);
/// The wait between a failed session and the next, doubling up to the max.
const RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub data_dir: PathBuf,
    pub brokers: String,
    pub topic: String,
    /// The topic is created with this many partitions, or must already have them.
    pub partitions: i32,
    pub replication_factor: i32,
    pub metrics_addr: Option<SocketAddr>,
    /// Wait before reading the partitions' ends, for a killed process's requests to finish.
    pub fence: Duration,
    /// Exit once every durable op is exported (an offline export, or a test).
    pub exit_when_caught_up: bool,
    /// A Produce request is closed once it holds this many events …
    pub request_events_max: u32,
    /// … or this many bytes of records (an op's events may be split over requests).
    pub request_size_max_bytes: usize,
    /// Connections to each broker; a partition's requests all go over one of them, each
    /// connection with its own window of requests in flight.
    pub connections: usize,
    /// Produce requests written and not yet answered on one connection, at most.
    pub requests_in_flight_max: usize,
    /// How long a request may take: start-up requests (metadata, topic creation, the ends),
    /// and each Produce request's answer (past it the session ends and a new one resumes).
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
            request_events_max: 20_000,
            request_size_max_bytes: 8 << 20,
            connections: 1,
            requests_in_flight_max: 4,
            request_timeout: Duration::from_secs(30),
            lock_path: None,
        }
    }

    /// Where the exporter's lock file is.
    pub fn lock_file(&self) -> PathBuf {
        self.lock_path.clone().unwrap_or_else(|| self.data_dir.join(format!("export.{}.lock", self.topic)))
    }

    fn check(&self) -> Result<(), ExportError> {
        if self.partitions < 1 {
            return Err(ExportError::Option(format!("--partitions {} must be at least 1", self.partitions)));
        }
        if self.request_events_max < 1 || self.request_size_max_bytes < 1 << 10 {
            return Err(ExportError::Option(
                "a request must be allowed at least 1 event and 1 KiB (--request-events-max, --request-size-max-bytes)"
                    .into(),
            ));
        }
        if self.request_size_max_bytes > 256 << 20 {
            return Err(ExportError::Option("--request-size-max-bytes is at most 256 MiB".into()));
        }
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return Err(ExportError::Option(format!("--connections is between 1 and {CONNECTIONS_MAX}")));
        }
        if !(1..=64).contains(&self.requests_in_flight_max) {
            return Err(ExportError::Option("--requests-in-flight-max is between 1 and 64".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(ExportError::Option("the request timeout must be positive".into()));
        }
        Ok(())
    }
}

/// What an exporter process did.
#[derive(Clone, Debug, Default)]
pub struct ExportReport {
    /// Where the follower of the first session resumed (None: from the start of the journal).
    pub resumed_after: Option<Position>,
    pub events_exported: u64,
    pub events_skipped: u64,
    /// Every event through this op is acknowledged.
    pub acked_through: Position,
    /// Sessions that ended on an error and were resumed from the topic's ends.
    pub sessions_resumed: u64,
}

/// Runs the exporter on its own runtime until caught up (`exit_when_caught_up`), a signal, or
/// an error it cannot resume from.
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
    options.check()?;
    if let Some(addr) = options.metrics_addr {
        let render_metrics = Arc::clone(&metrics);
        let bound = metrics_serve(addr, Arc::new(move || render_metrics.render())).await?;
        tracing::info!(%bound, "metrics at /metrics");
    }
    let _lock = lock_take(&options.lock_file())?;
    let (terminate_sender, terminated) = watch::channel(false);
    tokio::spawn(async move {
        signal_terminate().await;
        let _ = terminate_sender.send(true);
    });
    let mut process = Process { producer: None, fence_next: true, report: ExportReport::default() };
    let mut backoff = RETRY_BACKOFF_INITIAL;
    loop {
        metrics.sessions.add(1);
        let events_before = process.report.events_exported;
        match session_run(options, &metrics, &mut process, terminated.clone()).await {
            Ok(()) => break,
            Err(error) if error.is_resumable() => {
                if process.report.events_exported > events_before {
                    backoff = RETRY_BACKOFF_INITIAL;
                }
                process.report.sessions_resumed += 1;
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "the session ended; resuming from the topic's ends");
                let mut terminated = terminated.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = terminated.wait_for(|terminated| *terminated) => break,
                }
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
            Err(error) => return Err(error),
        }
    }
    process.report.events_skipped = metrics.events_skipped.get();
    tracing::info!(report = ?process.report, "exporter stopped");
    Ok(process.report)
}

/// What outlives a session in one exporter process.
struct Process {
    producer: Option<ProducerState>,
    /// The next producer id's session waits the fence first (a previous process's, or this
    /// process's lost producer's, requests may still be on their way).
    fence_next: bool,
    report: ExportReport,
}

/// One producer id and what it wrote, per partition, counted in records (= sequences).
struct ProducerState {
    id: ProducerId,
    /// Each partition's end (high-water mark) when the id was taken: its sequence 0.
    base: Vec<i64>,
    /// Records acknowledged, and the most ever sent, per partition.
    acked: Vec<i64>,
    sent: Vec<i64>,
    /// The broker said it does not know the id (or its epoch): the next session takes a new one.
    lost: bool,
    /// Sequences ran out in some partition: the next session takes a new id, with no fence.
    renew: bool,
}

impl ProducerState {
    /// The next sequence of each partition from the ends just read: what this id wrote there.
    /// Anything outside [acknowledged, sent] means another writer (or a broker that lost what
    /// it acknowledged), and exactly-once is already lost: stop loudly.
    fn sequences_resume(&mut self, topic: &str, ends: &[PartitionEnd]) -> Result<Vec<i32>, ExportError> {
        assert_eq!(ends.len(), self.base.len(), "one end a partition");
        let mut sequences = Vec::with_capacity(ends.len());
        for (partition, end) in ends.iter().enumerate() {
            let written = end.high_watermark - self.base[partition];
            if written < self.acked[partition] || written > self.sent[partition] {
                return Err(ExportError::Topic {
                    topic: topic.to_string(),
                    partition: partition as i32,
                    reason: format!(
                        "its end is at {}, this process's producer wrote {} records there from {} of which \
                         {} were acknowledged: another writer, or a broker that lost acknowledged records",
                        end.high_watermark, self.sent[partition], self.base[partition], self.acked[partition]
                    ),
                });
            }
            self.acked[partition] = written;
            sequences.push(i32::try_from(written).expect("sequences are renewed before they run out"));
        }
        Ok(sequences)
    }
}

/// One session: the topic, the broker connections, a producer id, the ends, then the follower
/// and the producer until caught up, a signal, or an error.
async fn session_run(
    options: &ExportOptions,
    metrics: &Arc<ExportMetrics>,
    process: &mut Process,
    terminated: watch::Receiver<bool>,
) -> Result<(), ExportError> {
    let leaders = topic_ensure(options).await?;
    let (addrs, connection_of) = connections_plan(&leaders, options.connections);
    let mut streams = Vec::with_capacity(addrs.len());
    for addr in &addrs {
        streams.push(connect(addr, options.request_timeout).await?);
    }
    if process.producer.as_ref().is_some_and(|producer| producer.lost || producer.renew) {
        let renewed = process.producer.take().is_some_and(|producer| producer.renew && !producer.lost);
        process.fence_next = !renewed;
    }
    let new_id = match &process.producer {
        Some(_) => None,
        None => Some(producer_id_init(&mut streams[0], options.request_timeout).await?),
    };
    if new_id.is_some() && process.fence_next {
        // The broker side of "one writer at a time": requests of a killed process (or of this
        // process's lost producer id) that the broker had already received are given this long
        // to be written before the ends are read.
        tokio::time::sleep(options.fence).await;
    }
    let ends = {
        let (topic, timeout) = (options.topic.clone(), options.request_timeout);
        tokio::task::spawn_blocking(move || tails_read(&leaders, &topic, timeout))
            .await
            .expect("the tail reader does not panic")?
    };
    let partitions = ends.len();
    if let Some(id) = new_id {
        let base = ends.iter().map(|end| end.high_watermark).collect();
        let zero = vec![0i64; partitions];
        process.producer = Some(ProducerState { id, base, acked: zero.clone(), sent: zero, lost: false, renew: false });
        process.fence_next = false;
        tracing::info!(producer_id = id.id, epoch = id.epoch, "producer id");
    }
    let producer = process.producer.as_mut().expect("a producer id by now");
    let sequences = producer.sequences_resume(&options.topic, &ends)?;
    let offsets_next: Vec<i64> = ends.iter().map(|end| end.high_watermark).collect();
    let tails: Vec<Option<Tail>> = ends.into_iter().map(|end| end.tail).collect();
    let resumed_after = tails.iter().flatten().map(|tail| tail.acked_through).max_by_key(|position| position.op);
    tracing::info!(
        resumed_after = %resumed_after.map_or("the start".to_string(), |p| p.to_string()),
        partitions_written = tails.iter().flatten().count(),
        "resuming"
    );
    if process.report.sessions_resumed == 0 && process.report.events_exported == 0 {
        process.report.resumed_after = resumed_after;
    }
    let acked = resumed_after.unwrap_or_default();
    let acked_shared = Arc::new(Mutex::new(acked));
    let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS_MAX);
    // Written requests' buffers go back to the follower to be filled again.
    let (spare_sender, spare_receiver) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let follow = FollowTask {
        dir: options.data_dir.clone(),
        after: resumed_after,
        tails,
        partitions: options.partitions,
        exit_when_caught_up: options.exit_when_caught_up,
        stop: Arc::clone(&stop),
        metrics: Arc::clone(metrics),
        builder: RequestBuilder::new(&options.topic, producer.id, sequences),
        connection_of,
        correlation_next: vec![1; addrs.len()],
        spare: spare_receiver,
        request_events_max: u64::from(options.request_events_max),
        request_size_max_bytes: options.request_size_max_bytes,
        request_timeout_ms: i32::try_from(options.request_timeout.as_millis()).unwrap_or(i32::MAX),
        acked: Arc::clone(&acked_shared),
    };
    let follower_thread = std::thread::Builder::new()
        .name("export-follow".into())
        .spawn(move || follow.run(sender))
        .map_err(ExportError::io("starting the follower thread"))?;
    let (answer_sender, answers) = mpsc::unbounded_channel();
    let mut writers = Vec::with_capacity(streams.len());
    let mut tasks = Vec::with_capacity(2 * streams.len());
    for (index, stream) in streams.into_iter().enumerate() {
        let (read, write) = stream.into_split();
        let (request_sender, requests) = mpsc::unbounded_channel();
        writers.push(request_sender);
        tasks.push(tokio::spawn(requests_write(index, write, requests, spare_sender.clone(), answer_sender.clone())));
        tasks.push(tokio::spawn(answers_read(index, read, answer_sender.clone())));
    }
    drop(spare_sender);
    let mut session = Session {
        topic: options.topic.clone(),
        writers,
        in_flight: (0..addrs.len()).map(|_| VecDeque::new()).collect(),
        answers,
        chunks: VecDeque::new(),
        chunk_index_front: 0,
        requests_in_flight_max: options.requests_in_flight_max,
        request_timeout: options.request_timeout,
        offsets_next,
        producer,
        acked,
        acked_shared,
        metrics: Arc::clone(metrics),
        exported: 0,
        renew: false,
    };
    let result = session.run(receiver, terminated).await;
    stop.store(true, Ordering::Release);
    for task in &tasks {
        task.abort();
    }
    let (exported, acked, renew) = (session.exported, session.acked, session.renew);
    drop(session); // the connections close
    let follow_result = follower_thread.join().expect("the follower thread does not panic");
    process.report.events_exported += exported;
    if acked.op >= process.report.acked_through.op {
        process.report.acked_through = acked;
    }
    result?;
    follow_result?;
    if renew {
        process.producer.as_mut().expect("the session's producer").renew = true;
        return Err(ExportError::Broker(
            "a partition's sequence numbers ran out; continuing with a new producer id".into(),
        ));
    }
    Ok(())
}

/// The connections of a session and each partition's: `connections` to each partition leader
/// (`leaders[p]`), a leader's partitions dealt over its connections in turn. A partition's
/// requests all go over one connection, so the broker reads its batches in the order they
/// were sent (a connection's requests are handled in order), as the sequence numbers need.
fn connections_plan(leaders: &[String], connections: usize) -> (Vec<String>, Vec<usize>) {
    assert!(connections >= 1, "at least one connection a broker");
    let mut brokers: Vec<&String> = leaders.iter().collect();
    brokers.sort();
    brokers.dedup();
    let addrs: Vec<String> =
        brokers.iter().flat_map(|broker| std::iter::repeat_n((*broker).clone(), connections)).collect();
    let mut dealt = vec![0usize; brokers.len()];
    let connection_of: Vec<usize> = leaders
        .iter()
        .map(|leader| {
            let broker = brokers.binary_search(&leader).expect("every leader is listed");
            let connection = broker * connections + dealt[broker] % connections;
            dealt[broker] += 1;
            connection
        })
        .collect();
    assert_eq!(addrs.len(), brokers.len() * connections, "connections to every leader");
    assert!(
        connection_of.iter().zip(leaders).all(|(connection, leader)| addrs[*connection] == *leader),
        "a partition's connection is to its leader"
    );
    (addrs, connection_of)
}

/// A connection to a broker, with Nagle off (a request is written whole, its answer awaited).
async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, ExportError> {
    let context = || format!("connecting to the broker {addr}");
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ExportError::Timeout(context()))?
        .map_err(ExportError::io(context()))?;
    stream.set_nodelay(true).map_err(ExportError::io(context()))?;
    Ok(stream)
}

/// A producer id and epoch for an idempotent producer (no transactional id).
async fn producer_id_init(stream: &mut TcpStream, timeout: Duration) -> Result<ProducerId, ExportError> {
    const CORRELATION_ID: i32 = 0;
    let context = "asking the broker for a producer id";
    let exchange = async {
        stream.write_all(&init_producer_id_request(CORRELATION_ID)).await?;
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).await?;
        let size = response_size(size).map_err(std::io::Error::other)?;
        let mut body = vec![0u8; size];
        stream.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ExportError::Timeout(context.into()))?
        .map_err(ExportError::io(context))?;
    init_producer_id_response_decode(&body, CORRELATION_ID)
        .map_err(|reason| ExportError::Broker(format!("{context}: it answered {reason}")))
}

/// Writes one connection's requests in the order the session queued them, each with vectored
/// writes straight from its buffers (`Request::io_slices`), and hands the buffers back to the
/// follower; a failed write is reported to the session like a failed answer, and ends it.
async fn requests_write(
    connection: usize,
    mut write: OwnedWriteHalf,
    mut requests: mpsc::UnboundedReceiver<Request>,
    spare: std::sync::mpsc::Sender<RequestBuffers>,
    events: mpsc::UnboundedSender<(usize, Result<Vec<u8>, ExportError>)>,
) {
    while let Some(request) = requests.recv().await {
        if let Err(error) = request_write(&mut write, &request).await {
            let _ = events.send((connection, Err(ExportError::io("writing a produce request")(error))));
            return;
        }
        // The follower may have stopped; then the buffers are simply dropped.
        let _ = spare.send(request.into_buffers());
    }
}

/// One request, written whole: `writev` until every slice is out.
async fn request_write(write: &mut OwnedWriteHalf, request: &Request) -> std::io::Result<()> {
    let mut slices_owned = request.io_slices();
    let mut slices: &mut [IoSlice<'_>] = &mut slices_owned;
    let mut left = request.size_bytes();
    while !slices.is_empty() {
        let written = write.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        assert!(written <= left, "no more written than there was");
        left -= written;
        IoSlice::advance_slices(&mut slices, written);
    }
    assert_eq!(left, 0, "every byte of the request written");
    Ok(())
}

/// Reads one connection's answers (their bytes after the size) and hands them to the session,
/// until the connection fails or the session stops it.
async fn answers_read(
    connection: usize,
    mut read: OwnedReadHalf,
    sender: mpsc::UnboundedSender<(usize, Result<Vec<u8>, ExportError>)>,
) {
    loop {
        let answer = async {
            let mut size = [0u8; 4];
            read.read_exact(&mut size).await.map_err(ExportError::io("reading a produce answer"))?;
            let mut body = vec![0u8; response_size(size)?];
            read.read_exact(&mut body).await.map_err(ExportError::io("reading a produce answer"))?;
            Ok(body)
        }
        .await;
        let failed = answer.is_err();
        if sender.send((connection, answer)).is_err() || failed {
            return;
        }
    }
}

/// Creates the topic with `partitions`, or checks that it has them: the partition of an event
/// is part of the resume rule, so the count cannot change under an exporter. Returns each
/// partition's leader (`host:port`), which answers the reads of its end and its produce
/// requests.
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

/// What the follower hands the session.
enum FollowItem {
    Chunk(Chunk),
    /// Caught up with the durable journal, and told to exit then.
    CaughtUp,
    /// A partition's sequences are about to run out: end the session once all is acknowledged.
    Renew,
}

/// Consecutive events in Produce requests (one per broker with records for it), and the last
/// op whose final event is among them (None: an op continues in the next chunk).
struct Chunk {
    requests: Vec<ChunkRequest>,
    completes: Option<OpDone>,
}

#[derive(Clone, Copy, Debug)]
struct OpDone {
    position: Position,
    timestamp_ns: u64,
}

struct ChunkRequest {
    connection: usize,
    request: Request,
}

/// The follower's side: ops to events, skipping what a previous session already wrote, into
/// requests.
struct FollowTask {
    dir: PathBuf,
    after: Option<Position>,
    tails: Vec<Option<Tail>>,
    partitions: i32,
    exit_when_caught_up: bool,
    stop: Arc<AtomicBool>,
    metrics: Arc<ExportMetrics>,
    builder: RequestBuilder,
    /// Each partition's broker connection (index).
    connection_of: Vec<usize>,
    correlation_next: Vec<i32>,
    /// Written requests' buffers, back from the session to be filled again.
    spare: std::sync::mpsc::Receiver<RequestBuffers>,
    request_events_max: u64,
    request_size_max_bytes: usize,
    request_timeout_ms: i32,
    /// The session's acknowledged position, for the messages' header.
    acked: Arc<Mutex<Position>>,
}

impl FollowTask {
    fn run(mut self, sender: mpsc::Sender<FollowItem>) -> Result<(), ExportError> {
        let mut follower = Follower::open(&self.dir, self.after, FollowOptions::default())?;
        let mut records = OpRecords::default();
        let mut acked_header = Vec::with_capacity(64);
        let mut completes: Option<OpDone> = None;
        while !self.stop.load(Ordering::Acquire) {
            let Some(op) = follower.next_op()? else {
                self.metrics.op_durable.set(follower.position().op.max(self.metrics.op_durable.get()));
                if (self.builder.records_count() > 0 || completes.is_some())
                    && !self.chunk_send(&sender, completes.take())
                {
                    return Ok(());
                }
                if self.exit_when_caught_up {
                    let _ = sender.blocking_send(FollowItem::CaughtUp);
                    return Ok(());
                }
                follower.wait(Duration::from_millis(100))?;
                continue;
            };
            let (position, timestamp_ns) = (op.position(), op.timestamp_ns);
            self.records_encode(&op, &mut records)?;
            self.metrics.op_followed.set(position.op);
            let durable = follower.op_durable();
            self.metrics.op_durable.set(if durable == u64::MAX { position.op } else { durable });
            acked_header.clear();
            acked_header.extend_from_slice(self.acked.lock().expect("not poisoned").to_string().as_bytes());
            let timestamp_ms = i64::try_from(timestamp_ns / 1_000_000).expect("a timestamp in ms fits i64");
            for record in records.records() {
                if self.full() && !self.chunk_send(&sender, completes.take()) {
                    return Ok(());
                }
                if self.builder.sequence_next(record.partition) >= SEQUENCE_RENEW_AT {
                    if !self.chunk_send(&sender, completes.take()) {
                        return Ok(());
                    }
                    let _ = sender.blocking_send(FollowItem::Renew);
                    return Ok(());
                }
                let headers: [(&[u8], &[u8]); 2] = [
                    (HEADER_ACKED_THROUGH.as_bytes(), &acked_header),
                    (HEADER_POSITION.as_bytes(), records.position_header(record)),
                ];
                let (key, value) = (records.key(record), records.payload(record));
                self.builder.record_append(record.partition, timestamp_ms, key, value, &headers);
            }
            completes = Some(OpDone { position, timestamp_ns });
            if self.full() && !self.chunk_send(&sender, completes.take()) {
                return Ok(());
            }
        }
        Ok(())
    }

    fn full(&self) -> bool {
        self.builder.records_count() >= self.request_events_max
            || self.builder.size_bytes() >= self.request_size_max_bytes
    }

    /// Closes the records appended so far into requests and hands them over; false if the
    /// session has stopped.
    fn chunk_send(&mut self, sender: &mpsc::Sender<FollowItem>, completes: Option<OpDone>) -> bool {
        while let Ok(buffers) = self.spare.try_recv() {
            self.builder.buffers_return(buffers);
        }
        let mut requests = Vec::new();
        for connection in 0..self.correlation_next.len() {
            let correlation_id = self.correlation_next[connection];
            let connection_of = &self.connection_of;
            let selected = |partition: i32| connection_of[partition as usize] == connection;
            if let Some(request) = self.builder.request_finish(correlation_id, self.request_timeout_ms, selected) {
                assert_eq!(request.correlation_id, correlation_id, "the request carries its correlation id");
                self.correlation_next[connection] = correlation_id.wrapping_add(1).max(1);
                requests.push(ChunkRequest { connection, request });
            }
        }
        assert_eq!(self.builder.records_count(), 0, "every partition has a connection");
        sender.blocking_send(FollowItem::Chunk(Chunk { requests, completes })).is_ok()
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

/// A chunk whose requests are written and not all answered.
struct ChunkPending {
    requests_outstanding: usize,
    completes: Option<OpDone>,
}

/// A request written on a connection and not yet answered.
struct InFlight {
    chunk_index: u64,
    correlation_id: i32,
    batches: Vec<BatchSent>,
    deadline: tokio::time::Instant,
}

/// The producer's side: writes the follower's requests in order, a bounded number in flight,
/// and checks each answer; a chunk is acknowledged once its requests and every earlier chunk's
/// are.
struct Session<'a> {
    topic: String,
    /// Per connection, its writer task's queue (at most a window of requests long).
    writers: Vec<mpsc::UnboundedSender<Request>>,
    /// Per connection, in the order written (a broker answers a connection's requests in order).
    in_flight: Vec<VecDeque<InFlight>>,
    answers: mpsc::UnboundedReceiver<(usize, Result<Vec<u8>, ExportError>)>,
    /// Written chunks not yet acknowledged; the front is chunk index `chunk_index_front`.
    chunks: VecDeque<ChunkPending>,
    chunk_index_front: u64,
    requests_in_flight_max: usize,
    request_timeout: Duration,
    /// Per partition, the offset the next record must land at: this process is the topic's only
    /// writer, so its records follow the end it read, one after another.
    offsets_next: Vec<i64>,
    producer: &'a mut ProducerState,
    acked: Position,
    acked_shared: Arc<Mutex<Position>>,
    metrics: Arc<ExportMetrics>,
    exported: u64,
    /// The follower asked for a new producer id.
    renew: bool,
}

impl Session<'_> {
    async fn run(
        &mut self,
        mut receiver: mpsc::Receiver<FollowItem>,
        mut terminated: watch::Receiver<bool>,
    ) -> Result<(), ExportError> {
        let mut progress = tokio::time::interval(Duration::from_secs(5));
        let mut following = !*terminated.borrow();
        while following || !self.chunks.is_empty() {
            let deadline = self.deadline_first();
            tokio::select! {
                biased;
                Some((connection, answer)) = self.answers.recv() => self.answered(connection, answer)?,
                item = receiver.recv(), if following && self.windows_open() => {
                    match item {
                        Some(FollowItem::Chunk(chunk)) => self.chunk_write(chunk)?,
                        Some(FollowItem::Renew) => {
                            self.renew = true;
                            following = false;
                        }
                        Some(FollowItem::CaughtUp) | None => following = false,
                    }
                }
                _ = terminated.wait_for(|terminated| *terminated), if following => {
                    tracing::info!("stopping: waiting for the answers to what was sent");
                    following = false;
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    return Err(ExportError::Timeout(format!(
                        "a produce request was not answered in {} ms",
                        self.request_timeout.as_millis()
                    )));
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

    /// Whether every connection has room for one more request (a chunk has a request for
    /// each connection with records in it, which is all of them but for a trickle).
    fn windows_open(&self) -> bool {
        self.in_flight.iter().all(|queue| queue.len() < self.requests_in_flight_max)
    }

    fn deadline_first(&self) -> Option<tokio::time::Instant> {
        self.in_flight.iter().filter_map(|queue| queue.front().map(|request| request.deadline)).min()
    }

    fn chunk_write(&mut self, chunk: Chunk) -> Result<(), ExportError> {
        let chunk_index = self.chunk_index_front + self.chunks.len() as u64;
        self.chunks.push_back(ChunkPending { requests_outstanding: chunk.requests.len(), completes: chunk.completes });
        for ChunkRequest { connection, mut request } in chunk.requests {
            for batch in &request.batches {
                let sent = &mut self.producer.sent[batch.partition as usize];
                *sent = (*sent).max(i64::from(batch.base_sequence) + i64::from(batch.count));
            }
            assert!(self.in_flight[connection].len() < self.requests_in_flight_max, "the window has room");
            // The deadline counts from here: a broker that stops reading is one that does not
            // answer, and its writes wait in the writer's queue.
            self.in_flight[connection].push_back(InFlight {
                chunk_index,
                correlation_id: request.correlation_id,
                batches: std::mem::take(&mut request.batches),
                deadline: tokio::time::Instant::now() + self.request_timeout,
            });
            self.writers[connection]
                .send(request)
                .map_err(|_| ExportError::Broker("the connection's writer stopped".into()))?;
        }
        // A chunk without records (ops without events) is acknowledged with the one before it.
        self.acks_advance();
        Ok(())
    }

    fn answered(&mut self, connection: usize, answer: Result<Vec<u8>, ExportError>) -> Result<(), ExportError> {
        let body = answer?;
        let request = self.in_flight[connection]
            .pop_front()
            .ok_or_else(|| ExportError::Broker("an answer to no request".into()))?;
        let answers = produce_response_decode(&body, request.correlation_id, &self.topic)
            .and_then(|answers| answers_match(&request.batches, &answers))
            .map_err(|reason| ExportError::Broker(format!("a produce request was answered with {reason}")))?;
        for (batch, answer) in answers {
            self.batch_answered(batch, answer)?;
        }
        assert!(request.chunk_index >= self.chunk_index_front, "an answer to a chunk already acknowledged");
        let chunk = &mut self.chunks[(request.chunk_index - self.chunk_index_front) as usize];
        assert!(chunk.requests_outstanding > 0, "one answer a request");
        chunk.requests_outstanding -= 1;
        self.acks_advance();
        Ok(())
    }

    /// A written batch must sit right after the previous one of its partition; anything else
    /// means something else wrote there since the end was read (a second exporter, or a killed
    /// process's request that the broker wrote after the fence), and exactly-once is already
    /// lost: stop loudly rather than go on. An error code ends the session (resumed by reading
    /// the ends again).
    fn batch_answered(&mut self, batch: BatchSent, answer: PartitionAnswer) -> Result<(), ExportError> {
        let partition = batch.partition;
        if answer.error_code != 0 {
            self.producer.lost |= error_is_producer_lost(answer.error_code);
            return Err(ExportError::Broker(format!(
                "partition {partition}: error {} ({}) for {} records from sequence {}",
                answer.error_code,
                error_name(answer.error_code),
                batch.count,
                batch.base_sequence
            )));
        }
        let expected = &mut self.offsets_next[partition as usize];
        if answer.base_offset != *expected {
            return Err(ExportError::Topic {
                topic: self.topic.clone(),
                partition,
                reason: format!(
                    "{} records landed at offset {}, where this session's next was {}: another writer, or a \
                     killed exporter's late request (see --fence-ms)",
                    batch.count, answer.base_offset, *expected
                ),
            });
        }
        *expected += i64::from(batch.count);
        let acked = &mut self.producer.acked[partition as usize];
        *acked = (*acked).max(i64::from(batch.base_sequence) + i64::from(batch.count));
        self.exported += batch.count as u64;
        self.metrics.events_exported.add(batch.count as u64);
        Ok(())
    }

    /// Acknowledges the chunks at the front whose requests are all answered.
    fn acks_advance(&mut self) {
        while self.chunks.front().is_some_and(|chunk| chunk.requests_outstanding == 0) {
            let chunk = self.chunks.pop_front().expect("a front chunk");
            self.chunk_index_front += 1;
            let Some(done) = chunk.completes else { continue };
            assert!(done.position.op > self.acked.op, "ops are acknowledged in order");
            self.acked = done.position;
            *self.acked_shared.lock().expect("not poisoned") = done.position;
            // A resumed session starts from the topic's ends, which may be behind what an
            // earlier session of this process saw acknowledged: the metric does not go back.
            if done.position.op > self.metrics.op_exported.get() {
                self.metrics.op_exported.set(done.position.op);
                self.metrics.op_exported_timestamp_ns.set(done.timestamp_ns);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_dealt_over_each_leaders_connections_in_turn() {
        let leaders: Vec<String> = ["b:2", "a:1", "b:2", "a:1", "a:1", "b:2", "a:1"].map(String::from).to_vec();
        let (addrs, connection_of) = connections_plan(&leaders, 2);
        assert_eq!(addrs, ["a:1", "a:1", "b:2", "b:2"]);
        // a:1 leads partitions 1, 3, 4, 6 (connections 0, 1, 0, 1); b:2 leads 0, 2, 5 (2, 3, 2).
        assert_eq!(connection_of, [2, 0, 3, 1, 0, 2, 1]);
        let (addrs, connection_of) = connections_plan(&leaders[..1], 4);
        assert_eq!(addrs.len(), 4, "connections even when a broker leads fewer partitions");
        assert_eq!(connection_of, [0]);
        let one: Vec<String> = vec!["a:1".to_string(); 32];
        let (addrs, connection_of) = connections_plan(&one, 1);
        assert_eq!(addrs, ["a:1"]);
        assert!(connection_of.iter().all(|connection| *connection == 0), "one connection: every partition on it");
    }
}
