//! Reading each partition's last event, on the exporter's start: the half of the resume rule
//! that looks at what is already in the topic (`exporter.rs` has the rule and why it is exact).
//!
//! It asks the broker for nothing but fetches, because that is what every Kafka-protocol broker
//! gets right: the high-water mark comes from a fetch response (not ListOffsets, which some
//! brokers answer wrongly for "latest"), and the last message is found by fetching a window
//! before the high-water mark that grows until it holds the message at `high - 1` (a broker may
//! return nothing for a fetch that starts inside a record batch, so a window that starts inside
//! the last batch is widened rather than believed empty).

use crate::error::ExportError;
use crate::event::{Event, EventPosition};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use walletd_replay::Position;

/// The header every exported message carries: the exporter's acknowledged position when it
/// sent the message (`OP:CHECKSUM`): every event of every op up to it was already in the topic.
pub const HEADER_ACKED_THROUGH: &str = "walletd-acked-through";
/// The header with the event's own position (`OP:INDEX`), so a reader need not parse the body.
pub const HEADER_POSITION: &str = "walletd-position";

/// What a partition ends with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    pub partition: i32,
    /// The offset of the last message.
    pub offset: i64,
    /// The last event's position, and its journal checksum (which names its op's record).
    pub last: EventPosition,
    pub last_checksum: u128,
    /// The last message's `walletd-acked-through` header.
    pub acked_through: Position,
}

/// A consumer for reading tails: no group, no commits, partition ends reported.
pub fn tail_consumer(brokers: &str, extra: &[(String, String)]) -> Result<BaseConsumer, ExportError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "walletd-export-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .set("auto.offset.reset", "earliest");
    for (key, value) in extra {
        config.set(key, value);
    }
    config.create().map_err(ExportError::kafka("creating the tail reader"))
}

/// The tails of partitions `0..partitions` of `topic` (None for an empty partition).
pub fn tails_read(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<Option<Tail>>, ExportError> {
    (0..partitions).map(|partition| tail_read(consumer, topic, partition, timeout)).collect()
}

/// How long a window before the high-water mark may stay silent before it is widened.
const WINDOW_QUIET: Duration = Duration::from_millis(200);

/// The last event of one partition.
pub fn tail_read(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Option<Tail>, ExportError> {
    let (low, high) = watermarks_fetched(consumer, topic, partition, timeout)?;
    assert!(low <= high, "watermarks in order");
    if high == low {
        return Ok(None);
    }
    let mut window = 16i64;
    loop {
        let from = (high - window).max(low);
        // A window that starts inside a batch may get nothing and no end from some brokers: give
        // it a short while, then widen. Only the window from the log's start (a batch start)
        // gets the full timeout. A short wait can only cost a wider window, never a wrong tail:
        // nothing but the message at `high - 1` is accepted.
        let wait = if from == low { timeout } else { WINDOW_QUIET.min(timeout) };
        if let Some(tail) = last_message_from(consumer, topic, partition, from, high, wait)? {
            assert_eq!(tail.offset, high - 1);
            return Ok(Some(tail));
        }
        if from == low {
            return Err(ExportError::Topic {
                topic: topic.to_string(),
                partition,
                reason: format!("no message found below the high-water mark {high} from offset {low}"),
            });
        }
        window = window.saturating_mul(8);
    }
}

/// (low, high) watermarks of a partition, as a fetch response reports them: assign at the
/// beginning and poll until the partition yields a message or its end.
fn watermarks_fetched(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), ExportError> {
    assign(consumer, topic, partition, Offset::Beginning)?;
    let deadline = Instant::now() + timeout;
    let mut first_offset = None;
    while first_offset.is_none() {
        match poll(consumer, topic, partition, deadline)? {
            Polled::Message(offset, _) => first_offset = Some(offset),
            Polled::End => break,
        }
    }
    let high = high_cached(consumer, topic, partition)?;
    match first_offset {
        // The first message from the beginning is at the log's start.
        Some(first) => Ok((first, high.max(first + 1))),
        None => Ok((high.max(0), high.max(0))),
    }
}

/// The high-water mark the last fetch response reported for a partition (librdkafka's cached
/// watermarks; the Rust binding does not expose the call).
fn high_cached(consumer: &BaseConsumer, topic: &str, partition: i32) -> Result<i64, ExportError> {
    let topic_c = std::ffi::CString::new(topic).map_err(|_| ExportError::Option(format!("topic {topic:?}")))?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is live for the borrow of `consumer`, the topic is a
    // NUL-terminated string that outlives the call, and the two out-pointers are valid i64s.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic_c.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if code != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        let code: rdkafka::error::RDKafkaErrorCode = code.into();
        return Err(ExportError::kafka(format!("watermarks of {topic}/{partition}"))(KafkaError::MetadataFetch(code)));
    }
    if high < 0 {
        return Err(ExportError::Timeout(format!("no high-water mark for {topic}/{partition} yet")));
    }
    Ok(high)
}

fn assign(consumer: &BaseConsumer, topic: &str, partition: i32, offset: Offset) -> Result<(), ExportError> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, offset)
        .map_err(ExportError::kafka(format!("assigning {topic}/{partition}")))?;
    consumer.assign(&list).map_err(ExportError::kafka(format!("assigning {topic}/{partition}")))
}

enum Polled {
    Message(i64, Option<Tail>),
    End,
}

/// The next message or the end of the partition, before `deadline`.
fn poll(consumer: &BaseConsumer, topic: &str, partition: i32, deadline: Instant) -> Result<Polled, ExportError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ExportError::Timeout(format!("reading the end of {topic}/{partition}")));
        }
        match consumer.poll(left.min(Duration::from_millis(100))) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(eof))) if eof == partition => return Ok(Polled::End),
            Some(Err(KafkaError::PartitionEOF(_))) => continue,
            Some(Err(error)) => return Err(ExportError::kafka(format!("reading {topic}/{partition}"))(error)),
            Some(Ok(message)) if message.partition() != partition => continue,
            Some(Ok(message)) => {
                let tail = tail_of(topic, &message)?;
                return Ok(Polled::Message(message.offset(), Some(tail)));
            }
        }
    }
}

/// Reads from `from` to the end; the message at `high - 1` if it came.
fn last_message_from(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    high: i64,
    timeout: Duration,
) -> Result<Option<Tail>, ExportError> {
    assign(consumer, topic, partition, Offset::Offset(from))?;
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let polled = match poll(consumer, topic, partition, deadline) {
            Err(ExportError::Timeout(_)) => return Ok(None),
            polled => polled?,
        };
        match polled {
            Polled::Message(offset, tail) if offset == high - 1 => return Ok(tail),
            Polled::Message(offset, tail) if offset < high => last = tail,
            // Written since the high-water mark was read: the exporter is the only writer,
            // and it has not started, so this is another writer.
            Polled::Message(offset, _) => {
                return Err(ExportError::Topic {
                    topic: topic.to_string(),
                    partition,
                    reason: format!("offset {offset} appeared past the high-water mark {high}: another writer?"),
                })
            }
            Polled::End => return Ok(last.filter(|tail: &Tail| tail.offset == high - 1)),
        }
    }
}

/// An exported message's position and acknowledged-through header.
pub fn tail_of<M: Message>(topic: &str, message: &M) -> Result<Tail, ExportError> {
    let bad = |reason: String| ExportError::BadMessage {
        topic: topic.to_string(),
        partition: message.partition(),
        offset: message.offset(),
        reason,
    };
    let payload = message.payload().ok_or_else(|| bad("no payload".into()))?;
    let event: Event = serde_json::from_slice(payload).map_err(|error| bad(error.to_string()))?;
    let last_checksum = u128::from_str_radix(&event.journal_checksum, 16).map_err(|error| bad(error.to_string()))?;
    let header = message
        .headers()
        .and_then(|headers| headers.iter().find(|header| header.key == HEADER_ACKED_THROUGH))
        .and_then(|header| header.value)
        .ok_or_else(|| bad(format!("no {HEADER_ACKED_THROUGH} header")))?;
    let acked_through: Position = std::str::from_utf8(header)
        .map_err(|error| bad(error.to_string()))?
        .parse()
        .map_err(|error: String| bad(format!("{HEADER_ACKED_THROUGH}: {error}")))?;
    if acked_through.op >= event.op {
        return Err(bad(format!("acked through op {} at an event of op {}", acked_through.op, event.op)));
    }
    Ok(Tail {
        partition: message.partition(),
        offset: message.offset(),
        last: event.position(),
        last_checksum,
        acked_through,
    })
}
