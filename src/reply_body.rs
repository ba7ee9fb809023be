//! Reply bodies as docs/PROTOCOL.md lays them out, written by the apply stage straight from
//! the ledger's output into the slot's buffer.

use walletd_core::command::records_as_bytes;
use walletd_core::{Output, Query};

/// Sparse results: (index u32, code u32) per failed event.
pub fn results_encode(output: &Output, body: &mut Vec<u8>) {
    for result in &output.results {
        body.extend_from_slice(&result.index.to_le_bytes());
        body.extend_from_slice(&result.code.to_le_bytes());
    }
}

/// The records of a read; returns how many.
pub fn query_encode(query: &Query<'_>, output: &Output, body: &mut Vec<u8>) -> u32 {
    match query {
        Query::LookupAccounts(_) => {
            body.extend_from_slice(records_as_bytes(&output.accounts));
            output.accounts.len() as u32
        }
        Query::LookupTransfers(_) => {
            for record in &output.transfers {
                body.extend_from_slice(records_as_bytes(std::slice::from_ref(&record.transfer)));
                body.push(record.status as u8);
                body.extend_from_slice(&[0u8; 15]);
            }
            output.transfers.len() as u32
        }
        Query::LookupBalances(_) => {
            for read in &output.balances {
                body.extend_from_slice(records_as_bytes(std::slice::from_ref(&read.account)));
                body.extend_from_slice(records_as_bytes(std::slice::from_ref(&read.limits)));
                let usage = &read.usage;
                for value in [usage.day, usage.day_count, usage.month, usage.month_count] {
                    body.extend_from_slice(&value.to_le_bytes());
                }
                body.extend_from_slice(&usage.day_amount.0.to_le_bytes());
                body.extend_from_slice(&usage.month_amount.0.to_le_bytes());
                body.extend_from_slice(&read.holds_count_total.to_le_bytes());
                body.extend_from_slice(&read.holds_count.to_le_bytes());
                body.extend_from_slice(&[0u8; 8]);
            }
            for read in &output.balances {
                body.extend_from_slice(records_as_bytes(output.holds_of(read)));
            }
            output.balances.len() as u32
        }
    }
}
