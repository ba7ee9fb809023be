//! The exporter's own Kafka producer: the two requests it needs (InitProducerId for a producer
//! id and epoch, Produce for the records) and the record batches (format v2) they carry,
//! written straight from the encoder's buffers into the request's bytes.
//!
//! Why not a client library: librdkafka spent about 6 µs of CPU an event of the exporter's
//! 6.5 (a malloc'd copy of every message, its broker thread rebuilding them into batches, a
//! delivery report per message), against 0.6 µs for the follower and the encoder. Here one
//! request carries one batch per partition of many events, built once, in the follower's
//! thread, and one response acknowledges all of them. docs/BENCHMARKS.md has the figures.
//!
//! What makes a retry harmless is the idempotent producer's part of the protocol, which the
//! exporter keeps exactly (the argument is in `exporter.rs` and docs/EVENTS.md): every batch
//! carries the producer id and epoch and the sequence number of its first record, counted
//! per partition from 0 for this producer id, and a broker writes a batch only if its base
//! sequence is the next one it expects for that producer and partition (a batch it already has
//! is answered `DUPLICATE_SEQUENCE_NUMBER`, one past a gap `OUT_OF_ORDER_SEQUENCE_NUMBER`).
//! Batches are never compressed (attributes 0): the exporter's start-up reads the ends back
//! and `tail.rs` reads uncompressed batches only.
//!
//! The wire (Kafka protocol, big-endian). Produce v7 is the newest version before the
//! "flexible" encodings (request header v1, response header v0); InitProducerId v3 is
//! flexible (request header v2 and response header v1 end with tagged fields, a varint count,
//! 0 here; strings in the body are compact: unsigned varint length + 1, 0 for null). Kafka
//! since 2.5 and tansu 0.6.0 answer both:
//!
//! ```text
//! request:   size i32 | api_key i16 | api_version i16 | correlation_id i32 | client_id string
//!            [| tagged fields uvarint = 0, flexible versions]
//! InitProducerId v3:  transactional_id compact nullable string = null
//!            | transaction_timeout_ms i32 | producer_id i64 = -1 | producer_epoch i16 = -1
//!            | tagged fields
//!   answer:  correlation_id i32 | tagged fields | throttle_time_ms i32 | error_code i16
//!            | producer_id i64 | producer_epoch i16 | tagged fields
//! Produce v7:  transactional_id nullable string = null | acks i16 = -1 | timeout_ms i32
//!            | topics [i32] { name string | partitions [i32] { index i32 | records bytes (i32
//!              length): one record batch } }
//!   answer:  topics [i32] { name string | partitions [i32] { index i32 | error_code i16
//!              | base_offset i64 | log_append_time_ms i64 | log_start_offset i64 } }
//!            | throttle_time_ms i32
//! batch:     base_offset i64 = 0 | batch_length i32 (the bytes after it) | leader_epoch i32 = -1
//!            | magic i8 = 2 | crc u32 (CRC-32C of everything after it) | attributes i16 = 0
//!            | last_offset_delta i32 | base_timestamp i64 | max_timestamp i64 | producer_id i64
//!            | producer_epoch i16 | base_sequence i32 | record_count i32 | records
//! record:    length varint | attributes i8 = 0 | timestamp_delta varlong | offset_delta varint
//!            | key (varint length) | value (varint length) | header_count varint
//!            | headers { key (varint length) | value (varint length) }
//! ```
//!
//! Varints are zig-zag base-128, as in the rest of the record format. The timestamp is the
//! engine's timestamp of the event's op, in ms (CreateTime): a pure function of the journal,
//! like everything else in the message.

use crate::error::ExportError;
use crate::wire::{string_put, varbytes_put, varbytes_size, varint_put, varint_size, Wire};
use std::io::IoSlice;

pub const API_KEY_PRODUCE: i16 = 0;
pub const API_VERSION_PRODUCE: i16 = 7;
pub const API_KEY_INIT_PRODUCER_ID: i16 = 22;
/// Version 3, the first that carries a producer id and epoch (-1: a new producer), which
/// tansu 0.6.0 requires; it is a "flexible" version (compact strings, tagged fields).
pub const API_VERSION_INIT_PRODUCER_ID: i16 = 3;
const CLIENT_ID: &str = "walletd-export";
/// acks=all: the broker answers once every in-sync replica has the batch.
const ACKS_ALL: i16 = -1;
pub(crate) const BATCH_MAGIC: i8 = 2;
/// From base_offset to record_count inclusive.
pub const BATCH_HEADER_SIZE_BYTES: usize = 61;
/// The bytes of the header before the CRC's range (base_offset .. crc).
const BATCH_CRC_START: usize = 21;
/// A response larger than this is not a Produce or InitProducerId answer of ours.
pub const RESPONSE_SIZE_MAX_BYTES: usize = 1 << 20;

/// Kafka's error codes that the exporter names (the rest are printed as numbers).
pub const ERROR_DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
pub const ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const ERROR_INVALID_PRODUCER_EPOCH: i16 = 47;
pub const ERROR_UNKNOWN_PRODUCER_ID: i16 = 59;
pub const ERROR_PRODUCER_FENCED: i16 = 90;

/// What an error code means, for the log.
pub fn error_name(code: i16) -> &'static str {
    match code {
        0 => "none",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        10 => "MESSAGE_TOO_LARGE",
        19 => "NOT_ENOUGH_REPLICAS",
        ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER => "OUT_OF_ORDER_SEQUENCE_NUMBER",
        ERROR_DUPLICATE_SEQUENCE_NUMBER => "DUPLICATE_SEQUENCE_NUMBER",
        ERROR_INVALID_PRODUCER_EPOCH => "INVALID_PRODUCER_EPOCH",
        ERROR_UNKNOWN_PRODUCER_ID => "UNKNOWN_PRODUCER_ID",
        ERROR_PRODUCER_FENCED => "PRODUCER_FENCED",
        -1 => "UNKNOWN_SERVER_ERROR",
        _ => "see the Kafka protocol's error codes",
    }
}

/// Whether an error code says the broker no longer knows this producer id or epoch: the
/// exporter then asks for a new one.
pub fn error_is_producer_lost(code: i16) -> bool {
    matches!(code, ERROR_UNKNOWN_PRODUCER_ID | ERROR_INVALID_PRODUCER_EPOCH | ERROR_PRODUCER_FENCED)
}

/// A producer id and epoch, from InitProducerId.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerId {
    pub id: i64,
    pub epoch: i16,
}

/// One partition's batch in a request: how many records, from which sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSent {
    pub partition: i32,
    pub count: i32,
    pub base_sequence: i32,
}

/// One partition's records, appended one by one until the request is finished.
#[derive(Debug, Default)]
struct PartitionRecords {
    bytes: Vec<u8>,
    count: i32,
    timestamp_base_ms: i64,
    timestamp_max_ms: i64,
}

/// One Produce request, ready to be written: its own bytes (`frame`: the request's header, and
/// each batch's size and header) with each partition's records slotted in at their place. It is
/// written with one vectored write (`io_slices`), so the records, written once by
/// `record_append`, are never copied into a request buffer.
#[derive(Debug)]
pub struct Request {
    pub correlation_id: i32,
    pub batches: Vec<BatchSent>,
    frame: Vec<u8>,
    /// Each batch's records, with the offset in `frame` that they follow, in frame order.
    records: Vec<(usize, Vec<u8>)>,
}

impl Request {
    /// The request's size on the wire, its size prefix included.
    pub fn size_bytes(&self) -> usize {
        self.frame.len() + self.records.iter().map(|(_, bytes)| bytes.len()).sum::<usize>()
    }

    /// The request's bytes in order: frame, records, frame, records, …, frame.
    pub fn io_slices(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(2 * self.records.len() + 1);
        let mut from = 0;
        for (at, bytes) in &self.records {
            assert!(from <= *at && *at <= self.frame.len(), "the records' places are in frame order");
            slices.push(IoSlice::new(&self.frame[from..*at]));
            slices.push(IoSlice::new(bytes));
            from = *at;
        }
        slices.push(IoSlice::new(&self.frame[from..]));
        slices
    }

    /// The request's bytes in one buffer (a copy: for tests and tools, not the exporter).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_bytes());
        for slice in self.io_slices() {
            out.extend_from_slice(&slice);
        }
        out
    }

    /// The buffers, once written, to be filled again (`RequestBuilder::buffers_return`).
    pub fn into_buffers(self) -> RequestBuffers {
        RequestBuffers { frame: self.frame, records: self.records.into_iter().map(|(_, bytes)| bytes).collect() }
    }
}

/// A written request's buffers, on their way back to the builder.
#[derive(Debug, Default)]
pub struct RequestBuffers {
    frame: Vec<u8>,
    records: Vec<Vec<u8>>,
}

/// Accumulates records per partition and turns them into Produce requests: one batch per
/// partition, one request per connection. The buffers go out with a request and come back
/// (`buffers_return`) to be filled again, so after the first requests nothing is allocated.
#[derive(Debug)]
pub struct RequestBuilder {
    topic: String,
    producer: ProducerId,
    partitions: Vec<PartitionRecords>,
    /// Partitions with records, in the order their first record came.
    touched: Vec<i32>,
    records_count: u64,
    size_bytes: usize,
    /// The next sequence number per partition.
    sequences: Vec<i32>,
    /// Buffers of written requests, to be used again.
    frames_spare: Vec<Vec<u8>>,
    records_spare: Vec<Vec<u8>>,
}

impl RequestBuilder {
    /// `sequences[p]`: the sequence number the next record of partition `p` gets.
    pub fn new(topic: &str, producer: ProducerId, sequences: Vec<i32>) -> RequestBuilder {
        assert!(!sequences.is_empty(), "a topic has partitions");
        assert!(sequences.iter().all(|sequence| *sequence >= 0), "sequences start at 0");
        assert!(topic.len() <= i16::MAX as usize, "a topic name fits a protocol string");
        let partitions = (0..sequences.len()).map(|_| PartitionRecords::default()).collect();
        RequestBuilder {
            topic: topic.to_string(),
            producer,
            partitions,
            touched: Vec::new(),
            records_count: 0,
            size_bytes: 0,
            sequences,
            frames_spare: Vec::new(),
            records_spare: Vec::new(),
        }
    }

    /// Records appended and not yet in a request.
    pub fn records_count(&self) -> u64 {
        self.records_count
    }

    /// Bytes of those records.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// The sequence the next record of `partition` would get, counting those appended.
    pub fn sequence_next(&self, partition: i32) -> i64 {
        let records = &self.partitions[partition as usize];
        i64::from(self.sequences[partition as usize]) + i64::from(records.count)
    }

    /// Appends one record (key, value, headers in order) to its partition's batch.
    pub fn record_append(
        &mut self,
        partition: i32,
        timestamp_ms: i64,
        key: &[u8],
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) {
        assert!(self.sequence_next(partition) < i64::from(i32::MAX), "the caller renews the producer first");
        let records = &mut self.partitions[partition as usize];
        if records.count == 0 {
            records.timestamp_base_ms = timestamp_ms;
            records.timestamp_max_ms = timestamp_ms;
            self.touched.push(partition);
        }
        let timestamp_delta = timestamp_ms - records.timestamp_base_ms;
        let offset_delta = i64::from(records.count);
        let mut body_size = 1 + varint_size(timestamp_delta) + varint_size(offset_delta);
        body_size += varbytes_size(key) + varbytes_size(value) + varint_size(headers.len() as i64);
        for (header_key, header_value) in headers {
            body_size += varbytes_size(header_key) + varbytes_size(header_value);
        }
        let start = records.bytes.len();
        let out = &mut records.bytes;
        varint_put(out, body_size as i64);
        out.push(0); // attributes
        varint_put(out, timestamp_delta);
        varint_put(out, offset_delta);
        varbytes_put(out, key);
        varbytes_put(out, value);
        varint_put(out, headers.len() as i64);
        for (header_key, header_value) in headers {
            varbytes_put(out, header_key);
            varbytes_put(out, header_value);
        }
        assert_eq!(out.len() - start, varint_size(body_size as i64) + body_size, "the record is as long as it says");
        records.count += 1;
        records.timestamp_max_ms = records.timestamp_max_ms.max(timestamp_ms);
        self.records_count += 1;
        self.size_bytes += out.len() - start;
    }

    /// One Produce request of the appended records of the partitions for which `selected` is
    /// true; those partitions start afresh. None if none of them has records.
    pub fn request_finish(
        &mut self,
        correlation_id: i32,
        timeout_ms: i32,
        selected: impl Fn(i32) -> bool,
    ) -> Option<Request> {
        let chosen: Vec<i32> = self.touched.iter().copied().filter(|partition| selected(*partition)).collect();
        if chosen.is_empty() {
            return None;
        }
        let mut frame = self.frames_spare.pop().unwrap_or_default();
        frame.clear();
        request_header_put(&mut frame, API_KEY_PRODUCE, API_VERSION_PRODUCE, correlation_id);
        frame.extend_from_slice(&(-1i16).to_be_bytes()); // transactional_id: null
        frame.extend_from_slice(&ACKS_ALL.to_be_bytes());
        frame.extend_from_slice(&timeout_ms.to_be_bytes());
        frame.extend_from_slice(&1i32.to_be_bytes());
        string_put(&mut frame, &self.topic);
        frame.extend_from_slice(&(chosen.len() as i32).to_be_bytes());
        let mut batches = Vec::with_capacity(chosen.len());
        let mut records_placed = Vec::with_capacity(chosen.len());
        for partition in &chosen {
            let base_sequence = self.sequences[*partition as usize];
            let mut spare = self.records_spare.pop().unwrap_or_default();
            spare.clear();
            let records = &mut self.partitions[*partition as usize];
            assert!(records.count > 0, "a touched partition has records");
            frame.extend_from_slice(&partition.to_be_bytes());
            let batch_size = BATCH_HEADER_SIZE_BYTES + records.bytes.len();
            frame.extend_from_slice(&i32::try_from(batch_size).expect("a batch under 2 GiB").to_be_bytes());
            batch_header_put(&mut frame, self.producer, base_sequence, records);
            batches.push(BatchSent { partition: *partition, count: records.count, base_sequence });
            self.sequences[*partition as usize] = base_sequence.checked_add(records.count).expect("room was checked");
            self.records_count -= records.count as u64;
            self.size_bytes -= records.bytes.len();
            records_placed.push((frame.len(), std::mem::replace(&mut records.bytes, spare)));
            records.count = 0;
        }
        self.touched.retain(|partition| !chosen.contains(partition));
        let mut request = Request { correlation_id, batches, frame, records: records_placed };
        let size = i32::try_from(request.size_bytes() - 4).expect("a request under 2 GiB");
        request.frame[..4].copy_from_slice(&size.to_be_bytes());
        Some(request)
    }

    /// Takes back a written request's buffers.
    pub fn buffers_return(&mut self, buffers: RequestBuffers) {
        self.frames_spare.push(buffers.frame);
        self.records_spare.extend(buffers.records);
    }
}

/// One record batch's header (v2) for `records`, uncompressed, with the CRC-32C of its
/// attributes onwards and the records that follow it.
fn batch_header_put(out: &mut Vec<u8>, producer: ProducerId, base_sequence: i32, records: &PartitionRecords) {
    let start = out.len();
    let batch_length = BATCH_HEADER_SIZE_BYTES - 12 + records.bytes.len();
    out.extend_from_slice(&0i64.to_be_bytes()); // base_offset: the broker assigns it
    out.extend_from_slice(&i32::try_from(batch_length).expect("a batch under 2 GiB").to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partition_leader_epoch
    out.push(BATCH_MAGIC as u8);
    out.extend_from_slice(&[0; 4]); // the CRC, below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression, CreateTime
    out.extend_from_slice(&(records.count - 1).to_be_bytes()); // last_offset_delta
    out.extend_from_slice(&records.timestamp_base_ms.to_be_bytes());
    out.extend_from_slice(&records.timestamp_max_ms.to_be_bytes());
    out.extend_from_slice(&producer.id.to_be_bytes());
    out.extend_from_slice(&producer.epoch.to_be_bytes());
    out.extend_from_slice(&base_sequence.to_be_bytes());
    out.extend_from_slice(&records.count.to_be_bytes());
    assert_eq!(out.len() - start, BATCH_HEADER_SIZE_BYTES, "the batch header's layout");
    // The CRC runs on from the header's last bytes over the records, which follow them on the
    // wire (not in this buffer). Kept up record by record instead, it would need a
    // `crc32c_combine` a batch, which measured slower than this one pass over the records.
    let header_crc = crc32c::crc32c(&out[start + BATCH_CRC_START..]);
    let crc = crc32c::crc32c_append(header_crc, &records.bytes);
    out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
}

/// An InitProducerId request for a new idempotent producer (no transactional id).
pub fn init_producer_id_request(correlation_id: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    request_header_put(&mut out, API_KEY_INIT_PRODUCER_ID, API_VERSION_INIT_PRODUCER_ID, correlation_id);
    out.push(0); // the header's tagged fields: none
    out.push(0); // transactional_id: null (compact)
    out.extend_from_slice(&(-1i32).to_be_bytes()); // transaction_timeout_ms: unused
    out.extend_from_slice(&(-1i64).to_be_bytes()); // producer_id: a new one
    out.extend_from_slice(&(-1i16).to_be_bytes()); // producer_epoch
    out.push(0); // tagged fields: none
    size_patch(&mut out);
    out
}

/// The producer id of an InitProducerId answer (the bytes after the size).
pub fn init_producer_id_response_decode(body: &[u8], correlation_id: i32) -> Result<ProducerId, String> {
    let mut wire = Wire::new(body);
    let correlation = wire.i32("the correlation id")?;
    if correlation != correlation_id {
        return Err(format!("correlation id {correlation}, expected {correlation_id}"));
    }
    wire.tagged_fields_skip("the header's tagged fields")?;
    wire.i32("the throttle time")?;
    let error_code = wire.i16("the error code")?;
    let id = wire.i64("the producer id")?;
    let epoch = wire.i16("the producer epoch")?;
    wire.tagged_fields_skip("the tagged fields")?;
    if error_code != 0 {
        return Err(format!("error code {error_code} ({})", error_name(error_code)));
    }
    if id < 0 || epoch < 0 {
        return Err(format!("producer id {id} epoch {epoch}"));
    }
    Ok(ProducerId { id, epoch })
}

/// One partition's answer to a Produce request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionAnswer {
    pub partition: i32,
    pub error_code: i16,
    pub base_offset: i64,
}

/// The partitions' answers of a Produce answer (the bytes after the size) for `topic`.
pub fn produce_response_decode(body: &[u8], correlation_id: i32, topic: &str) -> Result<Vec<PartitionAnswer>, String> {
    let mut wire = Wire::new(body);
    let correlation = wire.i32("the correlation id")?;
    if correlation != correlation_id {
        return Err(format!("correlation id {correlation}, expected {correlation_id}"));
    }
    let topics = wire.i32("the topic count")?;
    if topics != 1 {
        return Err(format!("{topics} topics for one sent"));
    }
    let name = wire.string("the topic name")?;
    if name != topic {
        return Err(format!("topic {name:?} for {topic:?}"));
    }
    let count = wire.i32("the partition count")?;
    let count = usize::try_from(count).map_err(|_| format!("{count} partitions"))?;
    let mut answers = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let partition = wire.i32("a partition index")?;
        let error_code = wire.i16("an error code")?;
        let base_offset = wire.i64("a base offset")?;
        wire.i64("the log append time")?;
        wire.i64("the log start offset")?;
        answers.push(PartitionAnswer { partition, error_code, base_offset });
    }
    wire.i32("the throttle time")?;
    if wire.remaining() != 0 {
        return Err(format!("{} bytes after the answer", wire.remaining()));
    }
    Ok(answers)
}

/// Checks that `answers` answer exactly the batches `sent`, in any order; returns each sent
/// batch with its answer.
pub fn answers_match(
    sent: &[BatchSent],
    answers: &[PartitionAnswer],
) -> Result<Vec<(BatchSent, PartitionAnswer)>, String> {
    if sent.len() != answers.len() {
        return Err(format!("{} partitions answered for {} sent", answers.len(), sent.len()));
    }
    let mut matched = Vec::with_capacity(sent.len());
    for batch in sent {
        let mut found = answers.iter().filter(|answer| answer.partition == batch.partition);
        let answer = found.next().ok_or_else(|| format!("no answer for partition {}", batch.partition))?;
        if found.next().is_some() {
            return Err(format!("partition {} answered twice", batch.partition));
        }
        matched.push((*batch, *answer));
    }
    Ok(matched)
}

/// The response's size prefix: the bytes that follow, or an error if it is not plausible.
pub fn response_size(size: [u8; 4]) -> Result<usize, ExportError> {
    let size = i32::from_be_bytes(size);
    match usize::try_from(size) {
        Ok(size) if (4..=RESPONSE_SIZE_MAX_BYTES).contains(&size) => Ok(size),
        _ => Err(ExportError::Broker(format!("a response of {size} bytes"))),
    }
}

fn request_header_put(out: &mut Vec<u8>, api_key: i16, api_version: i16, correlation_id: i32) {
    out.extend_from_slice(&[0; 4]); // the size, patched at the end
    out.extend_from_slice(&api_key.to_be_bytes());
    out.extend_from_slice(&api_version.to_be_bytes());
    out.extend_from_slice(&correlation_id.to_be_bytes());
    string_put(out, CLIENT_ID);
}

fn size_patch(out: &mut [u8]) {
    let size = i32::try_from(out.len() - 4).expect("a request under 2 GiB");
    out[..4].copy_from_slice(&size.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail::batches_decode;

    const PRODUCER: ProducerId = ProducerId { id: 7, epoch: 3 };

    #[test]
    fn a_request_is_produce_v7_with_one_batch_a_partition_and_sequences_that_continue() {
        let mut builder = RequestBuilder::new("t", PRODUCER, vec![0, 5, 0]);
        builder.record_append(1, 1_000, b"k1", b"v1", &[(b"h", b"x")]);
        builder.record_append(2, 1_000, b"k2", b"v2", &[]);
        builder.record_append(1, 1_002, b"k3", b"v3", &[(b"h", b"y")]);
        assert_eq!(builder.records_count(), 3);
        assert_eq!(builder.sequence_next(1), 7);
        let request = builder.request_finish(9, 30_000, |_| true).expect("records");
        let out = request.to_bytes();
        assert_eq!(
            request.batches,
            [
                BatchSent { partition: 1, count: 2, base_sequence: 5 },
                BatchSent { partition: 2, count: 1, base_sequence: 0 }
            ]
        );
        assert_eq!(i32::from_be_bytes(out[..4].try_into().unwrap()) as usize, out.len() - 4);
        assert_eq!(&out[4..12], &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(builder.records_count(), 0);
        assert_eq!(builder.sequence_next(1), 7, "the next batch of partition 1 starts at 7");
        assert!(builder.request_finish(10, 30_000, |_| true).is_none(), "nothing left");
    }

    /// A request of several batches, its records written from the partitions' own buffers:
    /// every batch reads back with a valid CRC, and the buffers of a written request are used
    /// again for the next one.
    #[test]
    fn a_request_of_several_batches_reads_back_and_its_buffers_come_back() {
        let mut builder = RequestBuilder::new("topic", PRODUCER, vec![0, 0, 0, 0]);
        for round in 0..3 {
            for index in 0..40 {
                let value = vec![b'a' + (index % 26) as u8; 50 + index * 3];
                builder.record_append(index as i32 % 4, 9_000 + index as i64, b"key", &value, &[(b"p", b"1:0")]);
            }
            let request = builder.request_finish(round + 1, 30_000, |partition| partition != 2).expect("records");
            assert_eq!(request.batches.len(), 3, "partition 2 left for another request");
            assert_eq!(request.io_slices().len(), 2 * 3 + 1);
            let bytes = request.to_bytes();
            assert_eq!(bytes.len(), request.size_bytes());
            assert_eq!(i32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
            let batches = batches_of(&bytes[request_batches_start("topic")..], 3);
            for (batch, sent) in batches.iter().zip(&request.batches) {
                let crc = u32::from_be_bytes(batch[17..21].try_into().unwrap());
                assert_eq!(crc, crc32c::crc32c(&batch[21..]), "partition {}", sent.partition);
                let mut read = Vec::new();
                batches_decode(batch, &mut read).expect("decodes");
                assert_eq!(read.len(), 10);
            }
            builder.buffers_return(request.into_buffers());
            assert_eq!(builder.records_spare.len(), 3, "three buffers out, three back");
            assert_eq!(builder.frames_spare.len(), 1, "one frame, used again");
            let rest = builder.request_finish(100 + round, 30_000, |_| true).expect("partition 2");
            assert_eq!(rest.batches, [BatchSent { partition: 2, count: 10, base_sequence: 10 * round }]);
            builder.buffers_return(rest.into_buffers());
        }
    }

    /// Where the first batch of a Produce request starts: header, null id, acks, timeout,
    /// topic count, name, partition count.
    fn request_batches_start(topic: &str) -> usize {
        4 + 2 + 2 + 4 + (2 + CLIENT_ID.len()) + 2 + 2 + 4 + 4 + (2 + topic.len()) + 4
    }

    /// The `count` batches of a request's partitions (index, size, batch), from `bytes`.
    fn batches_of(mut bytes: &[u8], count: usize) -> Vec<Vec<u8>> {
        let mut batches = Vec::new();
        for _ in 0..count {
            let size = i32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
            batches.push(bytes[8..8 + size].to_vec());
            bytes = &bytes[8 + size..];
        }
        assert!(bytes.is_empty(), "nothing after the last batch");
        batches
    }

    /// The batches the builder writes, read back by the exporter's own Fetch decoder (as the
    /// start-up reads them from a broker), with the CRC checked.
    #[test]
    fn a_batch_reads_back_with_its_records_headers_and_a_valid_crc() {
        let mut builder = RequestBuilder::new("topic", PRODUCER, vec![0]);
        let values: Vec<Vec<u8>> = (0..200).map(|index| vec![b'a' + (index % 26) as u8; 100 + index]).collect();
        for (index, value) in values.iter().enumerate() {
            let position = format!("1:{index}");
            builder.record_append(0, 5_000 + index as i64 / 7, b"key", value, &[(b"p", position.as_bytes())]);
        }
        let out = builder.request_finish(1, 30_000, |_| true).expect("records").to_bytes();
        // Skip to the batch: past the partition's index and the records' size.
        let batch = &out[request_batches_start("topic") + 4 + 4..];
        let crc = u32::from_be_bytes(batch[17..21].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&batch[21..]), "the CRC covers attributes to the end");
        assert_eq!(i64::from_be_bytes(batch[43..51].try_into().unwrap()), PRODUCER.id);
        let mut read = Vec::new();
        batches_decode(&with_base_offset(batch, 40), &mut read).expect("decodes");
        assert_eq!(read.len(), values.len());
        for (index, message) in read.iter().enumerate() {
            assert_eq!(message.offset, 40 + index as i64);
            assert_eq!(message.value.as_deref(), Some(&values[index][..]));
            assert_eq!(message.headers, [("p".to_string(), Some(format!("1:{index}").into_bytes()))]);
        }
    }

    fn with_base_offset(batch: &[u8], base_offset: i64) -> Vec<u8> {
        let mut batch = batch.to_vec();
        batch[..8].copy_from_slice(&base_offset.to_be_bytes());
        batch
    }

    fn answer_encode(correlation_id: i32, topic: &str, partitions: &[(i32, i16, i64)]) -> Vec<u8> {
        let mut out = correlation_id.to_be_bytes().to_vec();
        out.extend_from_slice(&1i32.to_be_bytes());
        string_put(&mut out, topic);
        out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
        for (partition, error_code, base_offset) in partitions {
            out.extend_from_slice(&partition.to_be_bytes());
            out.extend_from_slice(&error_code.to_be_bytes());
            out.extend_from_slice(&base_offset.to_be_bytes());
            out.extend_from_slice(&(-1i64).to_be_bytes());
            out.extend_from_slice(&0i64.to_be_bytes());
        }
        out.extend_from_slice(&0i32.to_be_bytes());
        out
    }

    #[test]
    fn an_answer_decodes_and_must_answer_every_batch_sent_once() {
        let body = answer_encode(4, "t", &[(2, 0, 10), (1, ERROR_DUPLICATE_SEQUENCE_NUMBER, -1)]);
        let answers = produce_response_decode(&body, 4, "t").expect("decodes");
        assert_eq!(answers[1], PartitionAnswer { partition: 1, error_code: 46, base_offset: -1 });
        let sent = [
            BatchSent { partition: 1, count: 2, base_sequence: 0 },
            BatchSent { partition: 2, count: 1, base_sequence: 0 },
        ];
        let matched = answers_match(&sent, &answers).expect("matches");
        assert_eq!(matched[0].1.partition, 1);
        assert!(answers_match(&sent[..1], &answers).is_err(), "an answer for a batch not sent");
        let twice = produce_response_decode(&answer_encode(4, "t", &[(1, 0, 0), (1, 0, 0)]), 4, "t").unwrap();
        assert!(answers_match(&sent, &twice).is_err(), "a partition answered twice");
        assert!(produce_response_decode(&body, 5, "t").is_err(), "another correlation id");
        assert!(produce_response_decode(&body, 4, "u").is_err(), "another topic");
        for cut in 0..body.len() {
            assert!(produce_response_decode(&body[..cut], 4, "t").is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn init_producer_id_round_trips_and_refuses_an_error() {
        let request = init_producer_id_request(3);
        assert_eq!(&request[4..12], &[0, 22, 0, 3, 0, 0, 0, 3]);
        assert_eq!(i32::from_be_bytes(request[..4].try_into().unwrap()) as usize, request.len() - 4);
        assert_eq!(&request[request.len() - 11..], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        let mut body = 3i32.to_be_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(&0i32.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&12i64.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.push(0);
        assert_eq!(init_producer_id_response_decode(&body, 3), Ok(ProducerId { id: 12, epoch: 0 }));
        body[9..11].copy_from_slice(&15i16.to_be_bytes());
        assert!(init_producer_id_response_decode(&body, 3).is_err());
    }
}
