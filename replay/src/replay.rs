//! Replay: journal records applied to a ledger, exactly as the live node applied them — the
//! record's timestamp is the one the ledger used — with every checkpoint's state hash
//! verified on the way. Recovery, the snapshot replica and `walletd replay` all go through
//! `Replayer::record_apply`, so what a drill proves is what a restart does.

use crate::checkpoint::Checkpoint;
use crate::error::ReplayError;
use crate::trust::{JournalChecks, TrustReport};
use std::time::Instant;
use walletd_core::{Batch, Command, CommandScratch, Config, Ledger, Output};
use walletd_journal::{JournalEnd, Reader, Record, RecordKind, Storage};

/// Applies a command record to `ledger` at the record's timestamp, into `output`, and returns
/// the batch as decoded (borrowing `scratch`). Refuses what the live node could not have
/// consumed: a body that does not decode, a journaled query, a timestamp that does not advance.
pub fn command_apply<'s>(
    scratch: &'s mut CommandScratch,
    ledger: &mut Ledger,
    record: &Record<'_>,
    output: &mut Output,
) -> Result<Batch<'s>, ReplayError> {
    assert_eq!(record.kind, RecordKind::CommandBatch);
    let command = scratch.decode(record.body).map_err(|error| ReplayError::bad_record(record.op, error))?;
    let Command::Batch(batch) = command else {
        return Err(ReplayError::BadRecord { op: record.op, reason: "a read-only query was journaled".into() });
    };
    if record.timestamp_ns <= ledger.timestamp_last() {
        return Err(ReplayError::BadRecord {
            op: record.op,
            reason: format!(
                "timestamp {} is not after the ledger's last timestamp {}",
                record.timestamp_ns,
                ledger.timestamp_last()
            ),
        });
    }
    ledger.apply(record.timestamp_ns, batch, output);
    Ok(batch)
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayStats {
    /// Records read (commands and checkpoints).
    pub records: u64,
    pub commands: u64,
    pub checkpoints_verified: u64,
    /// Transfer events applied (whatever their result).
    pub transfers: u64,
    /// The op of the last record applied (0 if none).
    pub op_last: u64,
    /// Where the journal ends, when the replay read to its end (not to a known durable op):
    /// past `op_last` when the replay stopped early (`until_op`), every record still verified.
    pub journal_end: Option<JournalEnd>,
    /// What the signature and chain-head checks found.
    pub trust: TrustReport,
    pub seconds: f64,
}

impl ReplayStats {
    pub fn transfers_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.transfers as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// What one record was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Command { transfers: u64 },
    Checkpoint(Checkpoint),
}

/// The buffers a replay reuses for every record.
pub struct Replayer {
    scratch: CommandScratch,
    output: Output,
}

impl Replayer {
    pub fn new(config: &Config) -> Replayer {
        Replayer { scratch: CommandScratch::new(config.batch_events_max), output: Output::new(config) }
    }

    /// Applies one record: a command batch at its timestamp, or a checkpoint's check.
    pub fn record_apply(&mut self, ledger: &mut Ledger, record: &Record<'_>) -> Result<Applied, ReplayError> {
        match record.kind {
            RecordKind::CommandBatch => {
                let batch = command_apply(&mut self.scratch, ledger, record, &mut self.output)?;
                let transfers = match batch {
                    Batch::CreateTransfers(events) => events.len() as u64,
                    _ => 0,
                };
                Ok(Applied::Command { transfers })
            }
            RecordKind::Checkpoint => {
                let checkpoint = Checkpoint::decode(record.body)
                    .map_err(|reason| ReplayError::BadRecord { op: record.op, reason })?;
                if !checkpoint.matches(ledger) {
                    return Err(ReplayError::CheckpointMismatch {
                        op: record.op,
                        recorded: checkpoint.state_hash,
                        computed: ledger.state_hash(),
                    });
                }
                Ok(Applied::Checkpoint(checkpoint))
            }
        }
    }

    /// Applies the records the reader yields as `plan` says, checking every record read
    /// (`plan.checks`: signatures, chain head). The reading and verifying (checksums, hash
    /// chain, signatures) runs on a second thread, overlapping with apply; the records come over
    /// in op order, copied into buffers the apply side hands back.
    pub fn replay<S>(
        &mut self,
        ledger: &mut Ledger,
        reader: Reader<S>,
        plan: ReadPlan,
        stats: &mut ReplayStats,
    ) -> Result<(), ReplayError>
    where
        S: Storage + Send + 'static,
        S::File: Send,
    {
        let start = Instant::now();
        let join_op = plan.join.map_or(0, |(op, _)| op);
        let (records, records_receive) = crossbeam_channel::bounded::<Result<Read, ReplayError>>(4);
        let (buffers, buffers_receive) = crossbeam_channel::bounded::<Vec<u8>>(8);
        let reading = std::thread::Builder::new()
            .name("replay-read".to_string())
            .spawn(move || replay_read(reader, plan, &records, &buffers_receive))
            .map_err(|source| ReplayError::Io { path: "replay reader thread".into(), source })?;
        let mut outcome = Ok(());
        for message in records_receive.iter() {
            let owned = match message {
                Ok(Read::Record(owned)) => owned,
                Ok(Read::End { journal_end, trust }) => {
                    stats.journal_end = journal_end;
                    stats.trust = trust;
                    break;
                }
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            };
            let record = Record {
                op: owned.op,
                timestamp_ns: owned.timestamp_ns,
                kind: owned.kind,
                body: &owned.body,
                checksum_prev: owned.checksum_prev,
                checksum: owned.checksum,
            };
            let applied = if record.op == join_op {
                self.record_join(ledger, &record, stats)
            } else {
                self.record_account(ledger, &record, stats)
            };
            if let Err(error) = applied {
                outcome = Err(error);
                break;
            }
            let _ = buffers.try_send(owned.body);
        }
        drop(records_receive); // a reader still sending sees the end and stops
        reading.join().expect("replay reader panicked");
        stats.seconds += start.elapsed().as_secs_f64();
        outcome
    }

    /// The checkpoint record at the snapshot's op: the snapshot's state must be the one it
    /// recorded (and, when it is signed, the one its key holder signed). Not counted as a
    /// record read: the snapshot already holds it.
    fn record_join(
        &mut self,
        ledger: &mut Ledger,
        record: &Record<'_>,
        stats: &mut ReplayStats,
    ) -> Result<(), ReplayError> {
        assert_eq!(stats.op_last, 0, "the join is the first record applied");
        assert_eq!(record.kind, RecordKind::Checkpoint, "the reading side checked the join is a checkpoint");
        match self.record_apply(ledger, record)? {
            Applied::Checkpoint(_) => stats.checkpoints_verified += 1,
            Applied::Command { .. } => unreachable!("a checkpoint applies as a checkpoint"),
        }
        stats.op_last = record.op;
        Ok(())
    }

    fn record_account(
        &mut self,
        ledger: &mut Ledger,
        record: &Record<'_>,
        stats: &mut ReplayStats,
    ) -> Result<(), ReplayError> {
        assert!(record.op > stats.op_last, "records come in op order");
        match self.record_apply(ledger, record)? {
            Applied::Command { transfers } => {
                stats.commands += 1;
                stats.transfers += transfers;
            }
            Applied::Checkpoint(_) => stats.checkpoints_verified += 1,
        }
        stats.records += 1;
        stats.op_last = record.op;
        Ok(())
    }
}

/// What a replay reads and what it applies.
#[derive(Clone, Debug)]
pub struct ReadPlan {
    /// Records before this op are read and checked but not applied (history behind a
    /// snapshot, read to reach an external chain head).
    pub op_apply_first: u64,
    /// Records after this op are read and checked but not applied (a drill of a past state).
    pub until_op: Option<u64>,
    /// The snapshot the ledger holds: its op and the journal checksum it recorded. The record
    /// there must carry that checksum and be a checkpoint of the snapshot's state.
    pub join: Option<(u64, u128)>,
    /// Signatures and chain head, checked on every record read.
    pub checks: JournalChecks,
}

/// What the reading side sends: a record to apply, or where the journal ended and what the
/// checks found.
enum Read {
    Record(OwnedRecord),
    End { journal_end: Option<JournalEnd>, trust: TrustReport },
}

/// A record copied out of the journal for the apply side.
struct OwnedRecord {
    op: u64,
    timestamp_ns: u64,
    kind: RecordKind,
    checksum_prev: u128,
    checksum: u128,
    body: Vec<u8>,
}

/// The reading side of `Replayer::replay`: verified and checked records, in order, until the
/// end (sent on with the checks' report), an error (sent on), or the apply side hanging up.
/// Records outside `op_apply_first..=until_op` are read and checked but not sent: a drill of a
/// past state still proves the whole journal and reports how far it reaches.
fn replay_read<S: Storage>(
    mut reader: Reader<S>,
    mut plan: ReadPlan,
    records: &crossbeam_channel::Sender<Result<Read, ReplayError>>,
    buffers: &crossbeam_channel::Receiver<Vec<u8>>,
) {
    let mut joined = plan.join.is_none();
    loop {
        let record = match reader.next_record() {
            Ok(Some(record)) => record,
            Ok(None) => {
                let _ = records.send(replay_read_end(&reader, plan, joined));
                return;
            }
            Err(error) => {
                let _ = records.send(Err(error.into()));
                return;
            }
        };
        let checked = plan.checks.record_check(&record).and_then(|()| join_check(&plan, &record));
        if let Err(error) = checked {
            let _ = records.send(Err(error));
            return;
        }
        joined |= plan.join.is_some_and(|(op, _)| op == record.op);
        if record.op < plan.op_apply_first || plan.until_op.is_some_and(|until| record.op > until) {
            continue;
        }
        let mut body = buffers.try_recv().unwrap_or_default();
        body.clear();
        body.extend_from_slice(record.body);
        let owned = OwnedRecord {
            op: record.op,
            timestamp_ns: record.timestamp_ns,
            kind: record.kind,
            checksum_prev: record.checksum_prev,
            checksum: record.checksum,
            body,
        };
        if records.send(Ok(Read::Record(owned))).is_err() {
            return;
        }
    }
}

/// At the snapshot's op: the record carries the checksum the snapshot recorded (the tail
/// continues that history) and is a checkpoint (snapshots are taken at checkpoints).
fn join_check(plan: &ReadPlan, record: &Record<'_>) -> Result<(), ReplayError> {
    let Some((op_snapshot, checksum_snapshot)) = plan.join.filter(|(op, _)| *op == record.op) else {
        return Ok(());
    };
    if record.checksum != checksum_snapshot {
        return Err(ReplayError::Discontinuity {
            reason: format!(
                "the journal record at op {op_snapshot} has checksum {:032x}, the snapshot recorded {checksum_snapshot:032x}",
                record.checksum
            ),
        });
    }
    if record.kind != RecordKind::Checkpoint {
        return Err(ReplayError::Discontinuity {
            reason: format!("the snapshot is at op {op_snapshot}, which is not a checkpoint record"),
        });
    }
    Ok(())
}

/// The end of the records: the snapshot's op must have been reached, then the checks' own end.
fn replay_read_end<S: Storage>(reader: &Reader<S>, plan: ReadPlan, joined: bool) -> Result<Read, ReplayError> {
    if !joined {
        let op_snapshot = plan.join.expect("a join to reach").0;
        return Err(ReplayError::Discontinuity { reason: journal_short_of(reader, op_snapshot) });
    }
    let journal_end = reader.end().cloned();
    let op_end = journal_end.as_ref().map_or(reader.op_next() - 1, |end| end.op_last);
    let trust = plan.checks.end_check(op_end)?;
    Ok(Read::End { journal_end, trust })
}

/// Why a journal does not reach a snapshot's op, in the words an operator needs: where it
/// ends, and whether a torn record follows.
pub(crate) fn journal_short_of<S: Storage>(reader: &Reader<S>, op_snapshot: u64) -> String {
    let Some(end) = reader.end() else {
        return format!("the journal ends before the snapshot's op {op_snapshot}");
    };
    let torn = match &end.torn_tail {
        Some((segment, offset)) => {
            format!(", followed by a record cut short at byte offset {offset} of {}", segment.display())
        }
        None => String::new(),
    };
    format!(
        "the journal's last valid record is op {}{torn}, but the snapshot is at op {op_snapshot}: journal records \
         the snapshot saw are missing",
        end.op_last
    )
}
