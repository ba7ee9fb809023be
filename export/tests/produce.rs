//! The broker behaviour the exporter's own producer rests on, checked against the real broker
//! (tansu, through `walletd_export::broker`): under one producer id a batch is written only at
//! the next sequence of its partition — a batch sent again is refused as a duplicate, one past
//! a gap as out of order, neither written — and that holds across a broker restart. This is
//! rule 3 of docs/EVENTS.md ("Delivery semantics"), which makes a resumed session's late or
//! repeated requests harmless.
//!
//! Skipped, saying so, when no broker binary is installed (`.ci/run` installs one).

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use walletd_export::broker::Broker;
use walletd_export::produce::{
    init_producer_id_request, init_producer_id_response_decode, produce_response_decode, response_size,
    PartitionAnswer, ProducerId, RequestBuilder, ERROR_DUPLICATE_SEQUENCE_NUMBER, ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER,
};
use walletd_export::tail::FetchClient;

const TOPIC: &str = "produce.test";
const TIMEOUT: Duration = Duration::from_secs(30);

fn topic_create(brokers: &str) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let topic = NewTopic::new(TOPIC, 2, TopicReplication::Fixed(1));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let results = runtime
        .block_on(admin.create_topics([&topic], &AdminOptions::new().request_timeout(Some(TIMEOUT))))
        .expect("create the topic");
    assert!(results.iter().all(Result::is_ok), "created: {results:?}");
}

fn connect(brokers: &str) -> TcpStream {
    let stream = TcpStream::connect(brokers).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream
}

fn round_trip(stream: &mut TcpStream, request: &[u8]) -> Vec<u8> {
    stream.write_all(request).expect("write the request");
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("read the size");
    let mut body = vec![0u8; response_size(size).expect("a plausible size")];
    stream.read_exact(&mut body).expect("read the answer");
    body
}

/// One batch of `values` for partition 0 from `sequence`, sent and answered.
fn batch_send(
    stream: &mut TcpStream,
    producer: ProducerId,
    sequence: i32,
    values: &[&str],
    correlation_id: i32,
) -> PartitionAnswer {
    let mut builder = RequestBuilder::new(TOPIC, producer, vec![sequence, 0]);
    for value in values {
        builder.record_append(0, 1_700_000_000_000, b"key", value.as_bytes(), &[(b"h".as_slice(), b"v".as_slice())]);
    }
    let request = builder.request_finish(correlation_id, 30_000, |_| true).expect("records").to_bytes();
    let body = round_trip(stream, &request);
    let answers = produce_response_decode(&body, correlation_id, TOPIC).expect("a produce answer");
    assert_eq!(answers.len(), 1, "one partition answered");
    assert_eq!(answers[0].partition, 0);
    answers[0]
}

/// Every value of partition 0, in offset order.
fn partition_values(brokers: &str) -> Vec<String> {
    let mut client = FetchClient::connect(brokers, TIMEOUT).expect("fetch client");
    let mut values = Vec::new();
    let mut offset = 0;
    // Bounded: the test writes a handful of records.
    for _ in 0..100 {
        let answer = client.fetch(TOPIC, 0, offset).expect("fetch");
        if answer.messages.is_empty() {
            assert_eq!(answer.high_watermark, offset, "read to the end");
            return values;
        }
        for message in answer.messages {
            assert_eq!(message.offset, offset, "offsets follow one another");
            values.push(String::from_utf8(message.value.expect("a value")).expect("UTF-8"));
            offset += 1;
        }
    }
    panic!("partition 0 did not end");
}

#[test]
fn under_one_producer_id_a_batch_is_written_only_at_its_partition_s_next_sequence_even_after_a_restart() {
    let Some(mut broker) = Broker::for_test() else {
        return;
    };
    topic_create(&broker.brokers());
    let mut stream = connect(&broker.brokers());
    let producer = init_producer_id_response_decode(&round_trip(&mut stream, &init_producer_id_request(1)), 1)
        .expect("a producer id");

    let first = batch_send(&mut stream, producer, 0, &["a", "b", "c"], 2);
    assert_eq!((first.error_code, first.base_offset), (0, 0), "the first batch at offset 0");
    // A resumed session's resend of the same sequences, and a late request of fewer records.
    let again = batch_send(&mut stream, producer, 0, &["a", "b", "c"], 3);
    assert_eq!(again.error_code, ERROR_DUPLICATE_SEQUENCE_NUMBER, "sent again: {again:?}");
    let shorter = batch_send(&mut stream, producer, 0, &["a"], 4);
    assert_eq!(shorter.error_code, ERROR_DUPLICATE_SEQUENCE_NUMBER, "a shorter one: {shorter:?}");
    let gap = batch_send(&mut stream, producer, 5, &["f"], 5);
    assert_eq!(gap.error_code, ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER, "past a gap: {gap:?}");
    let next = batch_send(&mut stream, producer, 3, &["d", "e"], 6);
    assert_eq!((next.error_code, next.base_offset), (0, 3), "the next sequence is written after the first");
    assert_eq!(partition_values(&broker.brokers()), ["a", "b", "c", "d", "e"]);

    drop(stream);
    broker.restart().expect("restart the broker");
    let mut stream = connect(&broker.brokers());
    let after = batch_send(&mut stream, producer, 3, &["d", "e"], 7);
    assert_eq!(after.error_code, ERROR_DUPLICATE_SEQUENCE_NUMBER, "the sequences survive a restart: {after:?}");
    let more = batch_send(&mut stream, producer, 5, &["f"], 8);
    assert_eq!((more.error_code, more.base_offset), (0, 5), "and go on from there");
    assert_eq!(partition_values(&broker.brokers()), ["a", "b", "c", "d", "e", "f"]);
}
