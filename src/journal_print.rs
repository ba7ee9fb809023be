//! `walletd journal print`: the journal's records as text, for a person reading what the node
//! recorded: each record's op, time, kind and chain checksum, and for a command every event's
//! key fields with the trace id its request carried (`-` for none). It reads the segments the
//! way recovery does (every record's checksum and chain verified) and applies nothing, so it
//! shows what was asked, not what it did: outcomes are the follower's business (`Follower`).
//! Read-only; safe on a live data directory.

use crate::cli::time_ms_format;
use crate::NodeError;
use std::io::Write;
use std::path::Path;
use walletd_core::command::{command_header_decode, COMMAND_HEADER_SIZE_BYTES};
use walletd_core::types::record_from_bytes;
use walletd_core::{Account, AccountLimits, Operation, TraceIds, Transfer};
use walletd_journal::{FileStorage, Reader, RecordKind};
use walletd_replay::ReplayError;

/// Which records to print.
#[derive(Clone, Copy, Debug)]
pub struct PrintOptions {
    /// The first op printed (1: from the start).
    pub op_first: u64,
    /// Records printed at most.
    pub count_max: u64,
    /// Print each event, not only the record line.
    pub events: bool,
}

/// Prints records from `data_dir`'s journal to `out`; returns how many it printed.
pub fn journal_print(data_dir: &Path, options: PrintOptions, out: &mut impl Write) -> Result<u64, NodeError> {
    assert!(options.op_first >= 1, "ops count from 1");
    let mut reader = Reader::open(FileStorage::default(), data_dir, options.op_first)?;
    let mut printed = 0;
    while printed < options.count_max {
        let Some(record) = reader.next_record()? else { break };
        let time = time_ms_format(record.timestamp_ns / 1_000_000);
        let line = match record.kind {
            RecordKind::Checkpoint => format!("op {} {time} checkpoint", record.op),
            RecordKind::CommandBatch => command_line(record.op, &time, record.body)?,
        };
        let written = writeln!(out, "{line} checksum {:032x}", record.checksum);
        written.map_err(|source| NodeError::Io { path: data_dir.to_path_buf(), source })?;
        if options.events && record.kind == RecordKind::CommandBatch {
            events_print(record.body, out).map_err(|source| NodeError::Io { path: data_dir.to_path_buf(), source })?;
        }
        printed += 1;
    }
    Ok(printed)
}

fn command_line(op: u64, time: &str, body: &[u8]) -> Result<String, NodeError> {
    let header = command_header_decode(body, u32::MAX).map_err(|error| ReplayError::bad_record(op, error))?;
    let traced = if header.traced { " traced" } else { "" };
    Ok(format!("op {op} {time} {} {} events{traced}", header.operation.name(), header.event_count))
}

/// One line per event: the fields that say what it is, and its trace id.
fn events_print(body: &[u8], out: &mut impl Write) -> std::io::Result<()> {
    let header = command_header_decode(body, u32::MAX).expect("command_line decoded this command");
    let trace_ids = TraceIds::of_command(body).expect("command_line decoded this command");
    let size_bytes = header.operation.event_size_bytes();
    for index in 0..header.event_count as usize {
        let start = COMMAND_HEADER_SIZE_BYTES + index * size_bytes;
        let event = &body[start..start + size_bytes];
        let trace = match trace_ids.get(index) {
            0 => "-".to_string(),
            trace_id => format!("{trace_id:032x}"),
        };
        writeln!(out, "  [{index}] {} trace {trace}", event_describe(header.operation, event))?;
    }
    Ok(())
}

fn event_describe(operation: Operation, event: &[u8]) -> String {
    match operation {
        Operation::CreateTransfers => {
            let transfer: Transfer = record_from_bytes(event);
            format!(
                "transfer {:032x} {} -> {} amount {} ledger {} code {} flags {:#x}",
                transfer.id.0,
                transfer.debit_account_id.0,
                transfer.credit_account_id.0,
                transfer.amount.0,
                transfer.ledger,
                transfer.code,
                transfer.flags.0
            )
        }
        Operation::CreateAccounts => {
            let account: Account = record_from_bytes(event);
            format!(
                "account {} ledger {} code {} flags {:#x}",
                account.id.0, account.ledger, account.code, account.flags.0
            )
        }
        Operation::SetAccountLimits => {
            let limits: AccountLimits = record_from_bytes(event);
            format!("limits of account {} flags {:#x}", limits.account_id.0, limits.flags.0)
        }
        _ => {
            let id = u128::from_le_bytes(event.try_into().expect("a 16-byte id"));
            format!("account {id}")
        }
    }
}
