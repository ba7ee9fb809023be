//! The event model against the writer's ledger: one event per transfer change, with the right
//! fields, positions unique and increasing, and every event valid against the JSON Schema file;
//! and the exporter's encoder against the model: the same bytes, keys and partitions.

mod common;

use common::*;
use std::collections::BTreeSet;
use walletd_export::encode::{op_records_encode, OpRecords};
use walletd_export::{events_of, op_records_reference, partition_of, Event, EventPosition, Status, SCHEMA_JSON};
use walletd_replay::{FollowOptions, Follower};

fn events_all(dir: &std::path::Path) -> Vec<Event> {
    let mut follower = Follower::open(dir, None, FollowOptions::default()).expect("open a follower");
    let mut events = Vec::new();
    while let Some(op) = follower.next_op().expect("next op") {
        events.extend(events_of(&op));
    }
    events
}

#[test]
fn every_event_is_valid_against_the_schema_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = journal_written(dir.path(), 6, 40);
    let events = events_all(dir.path());
    assert_eq!(events.len() as u64, node.transfer_changes, "one event per transfer change");
    let schema: serde_json::Value = serde_json::from_str(SCHEMA_JSON).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    for event in &events {
        let json = serde_json::to_value(event).expect("serialise");
        let errors: Vec<String> = validator.iter_errors(&json).map(|error| error.to_string()).collect();
        assert!(errors.is_empty(), "event {:?} is invalid: {errors:?}", event.position());
        let text = serde_json::to_string(event).expect("serialise");
        assert_eq!(&serde_json::from_str::<Event>(&text).expect("parse back"), event, "round trip");
    }
    let statuses: BTreeSet<String> = events.iter().map(|event| format!("{:?}", event.status)).collect();
    assert_eq!(statuses.len(), 5, "the workload makes every status: {statuses:?}");
}

#[test]
fn the_schema_refuses_what_is_not_an_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    journal_written(dir.path(), 1, 4);
    let event = events_all(dir.path()).into_iter().next().expect("an event");
    let schema: serde_json::Value = serde_json::from_str(SCHEMA_JSON).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let good = serde_json::to_value(&event).expect("serialise");
    assert!(validator.is_valid(&good));
    let mutations: [(&str, serde_json::Value); 5] = [
        ("amount", serde_json::json!(5)),
        ("id", serde_json::json!("XYZ")),
        ("op", serde_json::json!(0)),
        ("status", serde_json::json!("done")),
        ("pending_id", serde_json::json!("0".repeat(32))),
    ];
    for (field, value) in mutations {
        let mut bad = good.clone();
        bad[field] = value;
        assert!(!validator.is_valid(&bad), "{field} = {} should be refused", bad[field]);
    }
    let mut extra = good.clone();
    extra["surprise"] = serde_json::json!(1);
    assert!(!validator.is_valid(&extra), "unknown fields are refused");
}

#[test]
fn positions_are_unique_and_increase_and_fields_follow_the_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = journal_written(dir.path(), 4, 20);
    let events = events_all(dir.path());
    let positions: Vec<EventPosition> = events.iter().map(Event::position).collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "positions strictly increase");
    for event in &events {
        match event.status {
            Status::PendingPosted | Status::PendingVoided => assert!(event.pending_id.is_some()),
            _ => assert!(event.pending_id.is_none()),
        }
        assert_eq!(event.event_index.is_none(), event.status == Status::PendingExpired);
        assert_eq!(event.balances_after.debit.account_id, event.debit_account_id);
        assert_eq!(event.balances_after.credit.account_id, event.credit_account_id);
    }
    // The last after-image of every account is its final balance in the writer's ledger.
    let mut last: std::collections::BTreeMap<String, walletd_export::event::Balances> = Default::default();
    for event in &events {
        last.insert(event.debit_account_id.clone(), event.balances_after.debit.clone());
        last.insert(event.credit_account_id.clone(), event.balances_after.credit.clone());
    }
    for (id, balances) in &last {
        let account_id = walletd_core::AccountId(u128::from_str_radix(id, 16).expect("hex"));
        let mut output = walletd_core::Output::new(node.ledger.config());
        node.ledger.query(walletd_core::Query::LookupAccounts(&[account_id]), &mut output);
        let account = output.accounts.first().expect("the account exists");
        assert_eq!(balances.debits_posted, account.debits_posted.0.to_string(), "{id} debits_posted");
        assert_eq!(balances.credits_posted, account.credits_posted.0.to_string(), "{id} credits_posted");
        assert_eq!(balances.debits_pending, account.debits_pending.0.to_string(), "{id} debits_pending");
        assert_eq!(balances.credits_pending, account.credits_pending.0.to_string(), "{id} credits_pending");
    }
}

#[test]
fn the_encoder_writes_the_bytes_serde_writes_of_every_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    journal_written(dir.path(), 6, 40);
    let mut follower = Follower::open(dir.path(), None, FollowOptions::default()).expect("open a follower");
    let mut records = OpRecords::default();
    let (mut compared, mut traced) = (0usize, 0usize);
    while let Some(op) = follower.next_op().expect("next op") {
        let events = events_of(&op);
        let mut admit_all = |_, _| Ok::<bool, ()>(true);
        op_records_encode(&op, 8, &mut admit_all, &mut records).expect("admits all");
        assert_eq!(records.records().len(), events.len(), "op {}: a record per event", op.op);
        assert_eq!((records.position, records.timestamp_ns), (op.position(), op.timestamp_ns));
        let reference = op_records_reference(&op, 8);
        assert_eq!(reference.len(), events.len(), "op {}: a reference record per event", op.op);
        for ((record, event), expected) in records.records().iter().zip(&events).zip(&reference) {
            assert_eq!(
                String::from_utf8_lossy(records.payload(record)),
                String::from_utf8_lossy(&expected.payload),
                "event {:?}",
                event.position()
            );
            assert_eq!(records.key(record), expected.key.as_bytes());
            assert_eq!(record.partition, expected.partition);
            assert_eq!(record.partition, partition_of(event.key().as_bytes(), 8));
            assert_eq!(record.position, event.position());
            assert_eq!(records.position_header(record), expected.position_header.as_bytes());
            traced += usize::from(event.trace_id.is_some());
            compared += 1;
        }
        // Leaving out the first half of the positions (what a partition already holds).
        let half = EventPosition { op: op.op, index: events.len() as u32 / 2 };
        let mut admit_after = |_, position: EventPosition| Ok::<bool, ()>(position >= half);
        op_records_encode(&op, 8, &mut admit_after, &mut records).expect("admits");
        assert_eq!(records.skipped as usize, events.len() / 2);
        let positions: Vec<EventPosition> = records.records().iter().map(|record| record.position).collect();
        let wanted: Vec<EventPosition> = events.iter().map(Event::position).filter(|p| *p >= half).collect();
        assert_eq!(positions, wanted, "op {}: the admitted events, in order", op.op);
        // A refusal stops the op with the caller's error.
        if !events.is_empty() {
            let mut refuse = |partition, _| Err::<bool, i32>(partition);
            let refused = op_records_encode(&op, 8, &mut refuse, &mut records);
            assert_eq!(refused, Err(partition_of(events[0].key().as_bytes(), 8)));
        }
    }
    assert!(compared > 200, "a journal of every kind of event: {compared}");
    assert!(traced > 0 && traced < compared, "traced and untraced events: {traced} of {compared}");
}
