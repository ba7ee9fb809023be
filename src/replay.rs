//! Replay: journal records applied to a ledger, exactly as the live node applied them — the
//! record's timestamp is the one the ledger used — with every checkpoint's state hash
//! verified on the way. Recovery, the snapshot replica and `walletd replay` all go through
//! `Replayer::record_apply`, so what a drill proves is what a restart does.

use crate::checkpoint::Checkpoint;
use crate::error::NodeError;
use std::time::Instant;
use walletd_core::{Batch, Command, CommandScratch, Config, Ledger, Output};
use walletd_journal::{Reader, Record, RecordKind, Storage};

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReplayStats {
    /// Records read (commands and checkpoints).
    pub records: u64,
    pub commands: u64,
    pub checkpoints_verified: u64,
    /// Transfer events applied (whatever their result).
    pub transfers: u64,
    /// The op of the last record read (0 if none).
    pub op_last: u64,
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
    pub fn record_apply(&mut self, ledger: &mut Ledger, record: &Record<'_>) -> Result<Applied, NodeError> {
        match record.kind {
            RecordKind::CommandBatch => {
                let command =
                    self.scratch.decode(record.body).map_err(|error| NodeError::bad_record(record.op, error))?;
                let Command::Batch(batch) = command else {
                    return Err(NodeError::BadRecord {
                        op: record.op,
                        reason: "a read-only query was journaled".into(),
                    });
                };
                if record.timestamp_ns <= ledger.timestamp_last() {
                    return Err(NodeError::BadRecord {
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
                let checkpoint =
                    Checkpoint::decode(record.body).map_err(|reason| NodeError::BadRecord { op: record.op, reason })?;
                if !checkpoint.matches(ledger) {
                    return Err(NodeError::CheckpointMismatch {
                        op: record.op,
                        recorded: checkpoint.state_hash,
                        computed: ledger.state_hash(),
                    });
                }
                Ok(Applied::Checkpoint(checkpoint))
            }
        }
    }

    /// Applies every record the reader yields, up to `until_op` if given.
    pub fn replay<S: Storage>(
        &mut self,
        ledger: &mut Ledger,
        reader: &mut Reader<S>,
        until_op: Option<u64>,
        stats: &mut ReplayStats,
    ) -> Result<(), NodeError> {
        let start = Instant::now();
        while let Some(record) = reader.next_record()? {
            if until_op.is_some_and(|until| record.op > until) {
                break;
            }
            assert!(record.op > stats.op_last, "records come in op order");
            match self.record_apply(ledger, &record)? {
                Applied::Command { transfers } => {
                    stats.commands += 1;
                    stats.transfers += transfers;
                }
                Applied::Checkpoint(_) => stats.checkpoints_verified += 1,
            }
            stats.records += 1;
            stats.op_last = record.op;
        }
        stats.seconds += start.elapsed().as_secs_f64();
        Ok(())
    }
}
