//! Reading each partition's last event, on the exporter's start: the half of the resume rule
//! that looks at what is already in the topic (`exporter.rs` has the rule and why it is exact).
//!
//! It speaks one request of the Kafka protocol itself, Fetch (version 5), on its own blocking
//! socket, because the rule needs to know what each single fetch answered, and a consumer
//! library hides exactly that: it drops an empty answer and fetches again, so "this offset
//! returns nothing" and "the broker is slow" look the same, and a window that starts inside a
//! record batch on a broker that skips the rest of such a batch (tansu 0.6.0) waits forever.
//! Here every request is one round trip with a bounded wait, and every answer, empty or not,
//! decides the next step:
//!
//! 1. The high-water mark `hw` is read from a fetch response (never ListOffsets, which some
//!    brokers answer wrongly for "latest"), of a fetch past any end (or, on a broker that
//!    answers that "out of range", at 0), asking for one byte: no messages, just the mark.
//! 2. Probe backwards from it: fetch at `hw-1`, `hw-2`, `hw-4`, … (never below the log start).
//!    A fetch from at or before a batch's base offset returns that batch, so some probe returns
//!    records; one that starts inside the last batch may return nothing, and the next probe,
//!    twice as far back, is tried.
//! 3. Read forward from the first probe that returned records up to `hw`, and take the message
//!    at `hw - 1`.
//! 4. The answer counts only if the high-water mark did not move while it was read: a moving
//!    end means someone is still writing (another exporter, or a killed one's requests the
//!    broker is still working through), and the partition is read again, a bounded number of
//!    times, then refused.
//!
//! Only uncompressed batches (attributes' codec bits 0) are read: the exporter never compresses
//! (`produce.rs` writes attributes 0), so a compressed batch at a tail was not written by it.

use crate::error::ExportError;
use crate::event::{Event, EventPosition};
use crate::produce::{BATCH_HEADER_SIZE_BYTES, BATCH_MAGIC};
use crate::wire::{string_put, Wire};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
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
    /// The offset of the last message; the high-water mark is `offset + 1`.
    pub offset: i64,
    /// The last event's position, and its journal checksum (which names its op's record).
    pub last: EventPosition,
    pub last_checksum: u128,
    /// The last message's `walletd-acked-through` header.
    pub acked_through: Position,
}

/// A partition's end as the exporter found it on start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionEnd {
    /// The offset the next message will get, if nothing else writes.
    pub high_watermark: i64,
    /// The last message, None for an empty partition.
    pub tail: Option<Tail>,
}

/// A consumer with no group commits and partition ends reported: the test harness's and the
/// notifier tests' reader of whole topics.
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
    config.create().map_err(ExportError::kafka("creating the topic reader"))
}

/// How many bytes one fetch may bring back: enough for a few hundred events, small enough that
/// a probe costs the broker little.
const FETCH_MAX_BYTES: i32 = 256 * 1024;
/// Past the end of any partition: a fetch there answers nothing but the high-water mark.
const HIGH_WATERMARK_PROBE_OFFSET: i64 = 1 << 62;
/// How many times a partition whose end moved while it was read is read again.
const READ_ATTEMPTS_MAX: u32 = 8;
/// Probes and forward reads of one partition read (a bound, not a budget: a partition of
/// 2^40 messages takes 41 probes).
const FETCHES_MAX: u32 = 100_000;

/// One fetched message: its offset, value and headers (the key is not needed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub offset: i64,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// What one fetch of one partition answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchAnswer {
    /// The broker answered "offset out of range" (Kafka's error 1): nothing else is known.
    pub out_of_range: bool,
    pub high_watermark: i64,
    pub log_start: i64,
    /// The messages at or after the fetch offset, in offset order.
    pub messages: Vec<Fetched>,
}

/// A blocking connection to one broker that sends Fetch requests, one at a time.
pub struct FetchClient {
    stream: TcpStream,
    correlation_id: i32,
    /// Where it is connected, for messages.
    addr: String,
}

impl FetchClient {
    /// Connects to `addr` (`host:port`); every read and write waits at most `timeout`.
    pub fn connect(addr: &str, timeout: Duration) -> Result<FetchClient, ExportError> {
        assert!(!timeout.is_zero(), "a bounded wait");
        let context = || format!("connecting to the broker {addr} to read the topic's ends");
        let socket = addr
            .to_socket_addrs()
            .map_err(|error| ExportError::io(context())(error))?
            .next()
            .ok_or_else(|| ExportError::Option(format!("the broker address {addr:?} resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&socket, timeout).map_err(ExportError::io(context()))?;
        stream.set_read_timeout(Some(timeout)).map_err(ExportError::io(context()))?;
        stream.set_write_timeout(Some(timeout)).map_err(ExportError::io(context()))?;
        stream.set_nodelay(true).map_err(ExportError::io(context()))?;
        Ok(FetchClient { stream, correlation_id: 0, addr: addr.to_string() })
    }

    /// One Fetch of `topic`/`partition` from `offset`: no waiting for data at the broker.
    pub fn fetch(&mut self, topic: &str, partition: i32, offset: i64) -> Result<FetchAnswer, ExportError> {
        self.fetch_sized(topic, partition, offset, FETCH_MAX_BYTES)
    }

    /// A fetch that asks for at most `max_bytes` (a broker may still return a first batch that
    /// is larger, as Kafka does; tansu returns nothing then, which is all the high-water mark
    /// read wants).
    pub fn fetch_sized(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
    ) -> Result<FetchAnswer, ExportError> {
        assert!(offset >= 0, "a real offset: {offset}");
        assert!((1..=FETCH_MAX_BYTES).contains(&max_bytes), "a bounded answer");
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let request = fetch_request_encode(self.correlation_id, topic, partition, offset, max_bytes);
        let context = || format!("fetching {topic}/{partition}@{offset} from {}", self.addr);
        self.stream.write_all(&request).map_err(ExportError::io(context()))?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(ExportError::io(context()))?;
        let size = i32::from_be_bytes(size);
        if !(4..=FETCH_MAX_BYTES * 4 + (1 << 16)).contains(&size) {
            return Err(bad_answer(topic, partition, offset, format!("a response of {size} bytes")));
        }
        let mut body = vec![0u8; size as usize];
        self.stream.read_exact(&mut body).map_err(ExportError::io(context()))?;
        let answer = fetch_response_decode(&body, self.correlation_id, topic, partition, offset)
            .map_err(|reason| bad_answer(topic, partition, offset, reason))?;
        assert!(answer.messages.iter().all(|message| message.offset >= offset), "only what was asked for");
        Ok(answer)
    }
}

fn bad_answer(topic: &str, partition: i32, offset: i64, reason: String) -> ExportError {
    ExportError::Topic { topic: topic.to_string(), partition, reason: format!("a fetch at {offset} answered {reason}") }
}

/// The tails of the partitions of `topic` (None for an empty partition); `leaders[p]` is the
/// `host:port` of partition `p`'s leader, which answers its fetches.
pub fn tails_read(leaders: &[String], topic: &str, timeout: Duration) -> Result<Vec<PartitionEnd>, ExportError> {
    assert!(!leaders.is_empty(), "a topic has partitions");
    let mut clients: BTreeMap<&str, FetchClient> = BTreeMap::new();
    let started = Instant::now();
    let mut tails = Vec::with_capacity(leaders.len());
    for (partition, leader) in leaders.iter().enumerate() {
        let client = match clients.entry(leader.as_str()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(FetchClient::connect(leader, timeout)?),
        };
        tails.push(tail_read(client, topic, partition as i32)?);
    }
    tracing::info!(
        partitions = leaders.len(),
        written = tails.iter().filter(|end: &&PartitionEnd| end.tail.is_some()).count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "read the partitions' ends"
    );
    Ok(tails)
}

/// The last event of one partition, from an end that held still while it was read.
pub fn tail_read(client: &mut FetchClient, topic: &str, partition: i32) -> Result<PartitionEnd, ExportError> {
    for attempt in 1..=READ_ATTEMPTS_MAX {
        // Only the high-water mark is wanted from this one: ask past any end for as little as
        // possible (on tansu a fetch that returns messages costs a scan per message; Kafka
        // answers "out of range" there, and then the log start is asked).
        let mut first = client.fetch_sized(topic, partition, HIGH_WATERMARK_PROBE_OFFSET, 1)?;
        if first.out_of_range {
            first = client.fetch_sized(topic, partition, 0, 1)?;
        }
        if first.out_of_range {
            return Err(bad_answer(topic, partition, 0, "offset out of range, at 0 and past the end".into()));
        }
        let (log_start, high) = (first.log_start.max(0), first.high_watermark);
        if high < log_start {
            return Err(bad_answer(
                topic,
                partition,
                0,
                format!("high-water mark {high} below the log start {log_start}"),
            ));
        }
        if high == log_start {
            return Ok(PartitionEnd { high_watermark: high, tail: None });
        }
        match last_message_read(client, topic, partition, log_start, high)? {
            Some(message) => {
                let tail = tail_of(topic, partition, &message)?;
                tracing::debug!(partition, offset = tail.offset, last = ?tail.last, "partition end");
                return Ok(PartitionEnd { high_watermark: high, tail: Some(tail) });
            }
            None => tracing::warn!(
                partition,
                attempt,
                high,
                "the partition's end moved while it was read: another writer, or a killed exporter's \
                 requests still being written; reading it again"
            ),
        }
    }
    Err(ExportError::EndMoving { topic: topic.to_string(), partition, attempts: READ_ATTEMPTS_MAX })
}

/// The message at `high - 1`, found by probing backwards then reading forwards; None if the
/// high-water mark moved meanwhile.
fn last_message_read(
    client: &mut FetchClient,
    topic: &str,
    partition: i32,
    log_start: i64,
    high: i64,
) -> Result<Option<Fetched>, ExportError> {
    assert!(log_start < high, "a partition with messages");
    let mut back = 1i64;
    let mut fetches = 0u32;
    let mut found: Option<Fetched> = None;
    // Probe backwards until some fetch returns messages below `high`.
    while found.is_none() {
        let from = (high - back).max(log_start);
        let answer = client.fetch(topic, partition, from)?;
        fetches += 1;
        if answer.out_of_range || answer.high_watermark != high {
            return Ok(None);
        }
        found = answer.messages.into_iter().take_while(|message| message.offset < high).last();
        if found.is_none() && from == log_start {
            return Err(bad_answer(topic, partition, from, format!("nothing, below a high-water mark of {high}")));
        }
        back = back.saturating_mul(2);
        assert!(fetches < FETCHES_MAX, "probes double back to the log start long before this");
    }
    // Read forward to `high - 1`.
    let mut last = found.expect("a probe found messages");
    while last.offset < high - 1 {
        let answer = client.fetch(topic, partition, last.offset + 1)?;
        fetches += 1;
        if answer.out_of_range || answer.high_watermark != high {
            return Ok(None);
        }
        match answer.messages.into_iter().take_while(|message| message.offset < high).last() {
            Some(message) => last = message,
            None => {
                return Err(bad_answer(
                    topic,
                    partition,
                    last.offset + 1,
                    format!("nothing, below a high-water mark of {high}"),
                ))
            }
        }
        if fetches >= FETCHES_MAX {
            return Err(bad_answer(topic, partition, last.offset + 1, format!("too little to reach {high} in time")));
        }
    }
    assert_eq!(last.offset, high - 1, "the last message is just below the high-water mark");
    tracing::debug!(partition, high, probed_back = back / 2, fetches, "read the partition's end");
    Ok(Some(last))
}

/// An exported message's position and acknowledged-through header.
pub fn tail_of(topic: &str, partition: i32, message: &Fetched) -> Result<Tail, ExportError> {
    let bad = |reason: String| ExportError::BadMessage {
        topic: topic.to_string(),
        partition,
        offset: message.offset,
        reason,
    };
    let payload = message.value.as_deref().ok_or_else(|| bad("no payload".into()))?;
    let event: Event = serde_json::from_slice(payload).map_err(|error| bad(error.to_string()))?;
    let last_checksum = u128::from_str_radix(&event.journal_checksum, 16).map_err(|error| bad(error.to_string()))?;
    let header = message
        .headers
        .iter()
        .find(|(key, _)| key == HEADER_ACKED_THROUGH)
        .and_then(|(_, value)| value.as_deref())
        .ok_or_else(|| bad(format!("no {HEADER_ACKED_THROUGH} header")))?;
    let acked_through: Position = std::str::from_utf8(header)
        .map_err(|error| bad(error.to_string()))?
        .parse()
        .map_err(|error: String| bad(format!("{HEADER_ACKED_THROUGH}: {error}")))?;
    if acked_through.op >= event.op {
        return Err(bad(format!("acked through op {} at an event of op {}", acked_through.op, event.op)));
    }
    Ok(Tail { partition, offset: message.offset, last: event.position(), last_checksum, acked_through })
}

// The wire format (Kafka protocol, big-endian), Fetch version 5, the newest before the
// "flexible" encodings, which every broker since Kafka 1.0 and tansu answer:
//
//   request:  size i32 | api_key i16 = 1 | api_version i16 = 5 | correlation_id i32
//             | client_id string (i16 length) | replica_id i32 = -1 | max_wait_ms i32 = 0
//             | min_bytes i32 = 0 | max_bytes i32 | isolation_level i8 = 0
//             | topics [i32 count] { name string | partitions [i32 count] { partition i32
//               | fetch_offset i64 | log_start_offset i64 = -1 | partition_max_bytes i32 } }
//   response: size i32 | correlation_id i32 | throttle_time_ms i32
//             | topics [i32] { name string | partitions [i32] { partition i32 | error_code i16
//               | high_watermark i64 | last_stable_offset i64 | log_start_offset i64
//               | aborted_transactions nullable [i32] { producer_id i64 | first_offset i64 }
//               | records nullable bytes (i32 length) } }
//   records:  a sequence of record batches (magic 2): base_offset i64 | batch_length i32
//             | partition_leader_epoch i32 | magic i8 | crc u32 | attributes i16
//             | last_offset_delta i32 | first_timestamp i64 | max_timestamp i64 | producer_id i64
//             | producer_epoch i16 | base_sequence i32 | record_count i32 | records…, each
//             record: length varint | attributes i8 | timestamp_delta varlong
//             | offset_delta varint | key varint-length bytes | value varint-length bytes
//             | header_count varint | headers { key varint-length | value varint-length }.
//             The last batch may be cut short by the size limit; it is ignored.

const API_KEY_FETCH: i16 = 1;
const API_VERSION_FETCH: i16 = 5;
const CLIENT_ID: &str = "walletd-export-tail";
const ERROR_OFFSET_OUT_OF_RANGE: i16 = 1;

fn fetch_request_encode(correlation_id: i32, topic: &str, partition: i32, offset: i64, max_bytes: i32) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + topic.len());
    body.extend_from_slice(&API_KEY_FETCH.to_be_bytes());
    body.extend_from_slice(&API_VERSION_FETCH.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    string_put(&mut body, CLIENT_ID);
    body.extend_from_slice(&(-1i32).to_be_bytes()); // replica_id: a consumer
    body.extend_from_slice(&0i32.to_be_bytes()); // max_wait_ms: answer now
    body.extend_from_slice(&0i32.to_be_bytes()); // min_bytes: even nothing
    body.extend_from_slice(&max_bytes.to_be_bytes());
    body.push(0); // isolation_level: read uncommitted
    body.extend_from_slice(&1i32.to_be_bytes());
    string_put(&mut body, topic);
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&offset.to_be_bytes());
    body.extend_from_slice(&(-1i64).to_be_bytes());
    body.extend_from_slice(&max_bytes.to_be_bytes());
    let mut request = Vec::with_capacity(4 + body.len());
    request.extend_from_slice(&(body.len() as i32).to_be_bytes());
    request.extend_from_slice(&body);
    request
}

fn fetch_response_decode(
    body: &[u8],
    correlation_id: i32,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<FetchAnswer, String> {
    let mut wire = Wire::new(body);
    let correlation = wire.i32("the correlation id")?;
    if correlation != correlation_id {
        return Err(format!("correlation id {correlation}, expected {correlation_id}"));
    }
    wire.i32("the throttle time")?;
    let topics = wire.i32("the topic count")?;
    if topics != 1 {
        return Err(format!("{topics} topics for one asked"));
    }
    let name = wire.string("the topic name")?;
    let partitions = wire.i32("the partition count")?;
    if name != topic || partitions != 1 {
        return Err(format!("topic {name:?} with {partitions} partitions for {topic:?} with one"));
    }
    let index = wire.i32("the partition index")?;
    let error_code = wire.i16("the error code")?;
    let high_watermark = wire.i64("the high-water mark")?;
    wire.i64("the last stable offset")?;
    let log_start = wire.i64("the log start offset")?;
    if index != partition {
        return Err(format!("partition {index} for {partition}"));
    }
    if error_code == ERROR_OFFSET_OUT_OF_RANGE {
        return Ok(FetchAnswer { out_of_range: true, high_watermark, log_start, messages: Vec::new() });
    }
    if error_code != 0 {
        return Err(format!("error code {error_code} (Kafka protocol error codes: 1 offset out of range, 3 unknown topic or partition, 6 not the leader)"));
    }
    let aborted = wire.i32("the aborted transactions")?;
    for _ in 0..aborted.max(0) {
        wire.take(16, "an aborted transaction")?;
    }
    let records_size = wire.i32("the records' size")?;
    let records = wire.take(records_size.max(0) as usize, "the records")?;
    let mut messages = Vec::new();
    batches_decode(records, &mut messages)?;
    messages.retain(|message| message.offset >= offset);
    if messages.windows(2).any(|pair| pair[0].offset >= pair[1].offset) {
        return Err("offsets out of order".into());
    }
    Ok(FetchAnswer { out_of_range: false, high_watermark, log_start, messages })
}

/// Every whole batch's records, appended to `out`.
pub(crate) fn batches_decode(records: &[u8], out: &mut Vec<Fetched>) -> Result<(), String> {
    let mut wire = Wire::new(records);
    while wire.remaining() >= 12 {
        let base_offset = wire.i64("a batch's base offset")?;
        let batch_size = wire.i32("a batch's length")?;
        let batch_size = usize::try_from(batch_size).map_err(|_| format!("a batch length of {batch_size}"))?;
        if batch_size > wire.remaining() {
            return Ok(()); // cut short by the size limit
        }
        let batch = wire.take(batch_size, "a batch")?;
        if batch_size + 12 < BATCH_HEADER_SIZE_BYTES {
            return Err(format!("a batch of {batch_size} bytes, shorter than its header"));
        }
        batch_decode(base_offset, batch, out)?;
    }
    Ok(())
}

fn batch_decode(base_offset: i64, batch: &[u8], out: &mut Vec<Fetched>) -> Result<(), String> {
    let mut wire = Wire::new(batch);
    wire.i32("the partition leader epoch")?;
    let magic = wire.i8("the magic byte")?;
    if magic != BATCH_MAGIC {
        return Err(format!("a batch of magic {magic}, not {BATCH_MAGIC}"));
    }
    wire.take(4, "the crc")?;
    let attributes = wire.i16("the attributes")?;
    if attributes & 0x07 != 0 {
        return Err(format!("a compressed batch at offset {base_offset}: the exporter never writes one"));
    }
    wire.take(4 + 8 + 8 + 8 + 2 + 4, "the batch header")?;
    let count = wire.i32("the record count")?;
    if attributes & 0x20 != 0 {
        return Ok(()); // a control batch (transaction markers): no messages
    }
    for _ in 0..count.max(0) {
        let size = wire.varint("a record's length")?;
        let size = usize::try_from(size).map_err(|_| format!("a record of {size} bytes"))?;
        let mut record = Wire::new(wire.take(size, "a record")?);
        record.i8("a record's attributes")?;
        record.varint("a record's timestamp")?;
        let offset_delta = record.varint("a record's offset delta")?;
        record.varbytes("a record's key")?;
        let value = record.varbytes("a record's value")?.map(<[u8]>::to_vec);
        let header_count = record.varint("a record's header count")?;
        let mut headers = Vec::with_capacity(header_count.clamp(0, 16) as usize);
        for _ in 0..header_count.max(0) {
            let key = record.varbytes("a header's key")?.unwrap_or_default();
            let key = String::from_utf8(key.to_vec()).map_err(|_| "a header key not UTF-8".to_string())?;
            headers.push((key, record.varbytes("a header's value")?.map(<[u8]>::to_vec)));
        }
        out.push(Fetched { offset: base_offset + offset_delta, value, headers });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::varint_put;

    fn batch_encode(base_offset: i64, values: &[&str]) -> Vec<u8> {
        let mut records = Vec::new();
        for (delta, value) in values.iter().enumerate() {
            let mut record = vec![0u8];
            varint_put(&mut record, 0);
            varint_put(&mut record, delta as i64);
            varint_put(&mut record, -1);
            varint_put(&mut record, value.len() as i64);
            record.extend_from_slice(value.as_bytes());
            varint_put(&mut record, 1);
            varint_put(&mut record, 1);
            record.push(b'h');
            varint_put(&mut record, 2);
            record.extend_from_slice(b"hv");
            varint_put(&mut records, record.len() as i64);
            records.extend_from_slice(&record);
        }
        let mut batch = Vec::new();
        batch.extend_from_slice(&0i32.to_be_bytes());
        batch.push(2);
        batch.extend_from_slice(&[0; 4]);
        batch.extend_from_slice(&0i16.to_be_bytes());
        batch.extend_from_slice(&[0; 4 + 8 + 8 + 8 + 2 + 4]);
        batch.extend_from_slice(&(values.len() as i32).to_be_bytes());
        batch.extend_from_slice(&records);
        let mut out = base_offset.to_be_bytes().to_vec();
        out.extend_from_slice(&(batch.len() as i32).to_be_bytes());
        out.extend_from_slice(&batch);
        out
    }

    fn response_encode(correlation_id: i32, high: i64, records: &[u8]) -> Vec<u8> {
        let mut out = correlation_id.to_be_bytes().to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        string_put(&mut out, "t");
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&3i32.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&high.to_be_bytes());
        out.extend_from_slice(&high.to_be_bytes());
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.extend_from_slice(&(records.len() as i32).to_be_bytes());
        out.extend_from_slice(records);
        out
    }

    #[test]
    fn a_response_decodes_to_the_messages_at_or_after_the_fetch_offset() {
        let mut records = batch_encode(10, &["a", "b", "c"]);
        records.extend(batch_encode(13, &["d"]));
        let answer = fetch_response_decode(&response_encode(7, 14, &records), 7, "t", 3, 11).expect("decodes");
        assert_eq!(answer.high_watermark, 14);
        let offsets: Vec<i64> = answer.messages.iter().map(|message| message.offset).collect();
        assert_eq!(offsets, [11, 12, 13]);
        assert_eq!(answer.messages[2].value.as_deref(), Some(&b"d"[..]));
        assert_eq!(answer.messages[0].headers, [("h".to_string(), Some(b"hv".to_vec()))]);
    }

    #[test]
    fn a_batch_cut_short_by_the_size_limit_is_left_out_and_bad_bytes_are_refused() {
        let mut records = batch_encode(0, &["a"]);
        let whole = records.len();
        records.extend(batch_encode(1, &["b", "c"]));
        records.truncate(whole + 20);
        let answer = fetch_response_decode(&response_encode(1, 3, &records), 1, "t", 3, 0).expect("decodes");
        assert_eq!(answer.messages.len(), 1);
        assert!(fetch_response_decode(&response_encode(1, 3, &records), 2, "t", 3, 0).is_err(), "wrong correlation");
        let body = response_encode(1, 3, &batch_encode(0, &["a"]));
        for cut in 0..body.len() - 1 {
            let decoded = fetch_response_decode(&body[..cut], 1, "t", 3, 0);
            assert!(decoded.is_err() || decoded.is_ok_and(|answer| answer.messages.is_empty()), "cut at {cut}");
        }
    }

    #[test]
    fn a_request_is_fetch_version_5_with_its_size_first() {
        let request = fetch_request_encode(9, "topic", 2, 40, 100);
        assert_eq!(i32::from_be_bytes(request[..4].try_into().unwrap()) as usize, request.len() - 4);
        assert_eq!(&request[4..8], &[0, 1, 0, 5]);
        assert_eq!(&request[request.len() - 20..request.len() - 12], &40i64.to_be_bytes());
    }
}
