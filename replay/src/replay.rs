//! Replay: journal records applied to a ledger, exactly as the live node applied them — the
//! record's timestamp is the one the ledger used — with every checkpoint's state hash
//! verified on the way. Recovery, the snapshot replica and `walletd replay` all go through
//! `Replayer::record_apply`, so what a drill proves is what a restart does.

use crate::checkpoint::Checkpoint;
use crate::error::ReplayError;
use std::time::Instant;
use walletd_core::{Batch, Command, CommandScratch, Config, Ledger, Output};
use walletd_journal::{JournalEnd, Reader, Record, RecordKind, Storage};

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
                let command =
                    self.scratch.decode(record.body).map_err(|error| ReplayError::bad_record(record.op, error))?;
                let Command::Batch(batch) = command else {
                    return Err(ReplayError::BadRecord {
                        op: record.op,
                        reason: "a read-only query was journaled".into(),
                    });
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
                let transfers = match batch {
                    Batch::CreateTransfers(events) => events.len() as u64,
                    _ => 0,
                };
                ledger.apply(record.timestamp_ns, batch, &mut self.output);
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

    /// Applies every record the reader yields, up to `until_op` if given. The reading and
    /// verifying (checksums, hash chain) runs on a second thread, overlapping with apply; the
    /// records come over in op order, copied into buffers the apply side hands back.
    pub fn replay<S>(
        &mut self,
        ledger: &mut Ledger,
        reader: Reader<S>,
        until_op: Option<u64>,
        stats: &mut ReplayStats,
    ) -> Result<(), ReplayError>
    where
        S: Storage + Send + 'static,
        S::File: Send,
    {
        let start = Instant::now();
        let (records, records_receive) = crossbeam_channel::bounded::<Result<Read, ReplayError>>(4);
        let (buffers, buffers_receive) = crossbeam_channel::bounded::<Vec<u8>>(8);
        let reading = std::thread::Builder::new()
            .name("replay-read".to_string())
            .spawn(move || replay_read(reader, until_op, &records, &buffers_receive))
            .map_err(|source| ReplayError::Io { path: "replay reader thread".into(), source })?;
        let mut outcome = Ok(());
        for message in records_receive.iter() {
            let owned = match message {
                Ok(Read::Record(owned)) => owned,
                Ok(Read::End(end)) => {
                    stats.journal_end = Some(end);
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
            if let Err(error) = self.record_account(ledger, &record, stats) {
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

/// What the reading side sends: a record to apply, or where the journal ended.
enum Read {
    Record(OwnedRecord),
    End(JournalEnd),
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

/// The reading side of `Replayer::replay`: verified records, in order, until the end (sent
/// on, if the reader found one), an error (sent on), or the apply side hanging up. Records
/// past `until_op` are read and verified but not sent: a drill of a past state still proves
/// the whole journal and reports how far it reaches.
fn replay_read<S: Storage>(
    mut reader: Reader<S>,
    until_op: Option<u64>,
    records: &crossbeam_channel::Sender<Result<Read, ReplayError>>,
    buffers: &crossbeam_channel::Receiver<Vec<u8>>,
) {
    loop {
        let record = match reader.next_record() {
            Ok(Some(record)) => record,
            Ok(None) => {
                if let Some(end) = reader.end() {
                    let _ = records.send(Ok(Read::End(end.clone())));
                }
                return;
            }
            Err(error) => {
                let _ = records.send(Err(error.into()));
                return;
            }
        };
        if until_op.is_some_and(|until| record.op > until) {
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
