//! The hot responses written straight into one buffer: a transfer (`TransferView`) and a
//! batch's results (`BatchResponse`), byte for byte what serde_json writes for those types
//! (a test compares them), without building their strings. A batch of a thousand transfers
//! otherwise allocates ten strings a transfer and walks them twice.

use crate::api::{kind_text, status_text, BatchError};
use crate::currency::Currencies;
use crate::domain::Outcome;
use crate::ids::id_bytes;
use walletd_core::{TransferFlags, TransferRecord};

/// Appends the JSON of `transfer_view(currencies, record)`.
pub fn transfer_json(currencies: &Currencies, record: &TransferRecord, out: &mut Vec<u8>) {
    let transfer = &record.transfer;
    out.extend_from_slice(b"{\"transaction_id\":");
    id_quoted(transfer.id.0, out);
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(status_text(record.status).as_bytes());
    out.extend_from_slice(b"\",\"timestamp\":\"");
    rfc3339_append(transfer.timestamp, out);
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(kind_text(transfer).as_bytes());
    out.extend_from_slice(b"\",\"sender_id\":");
    id_quoted(transfer.debit_account_id.0, out);
    out.extend_from_slice(b",\"receiver_id\":");
    id_quoted(transfer.credit_account_id.0, out);
    out.extend_from_slice(b",\"amount\":\"");
    let currency = currencies.by_ledger(transfer.ledger);
    amount_append(transfer.amount.0, currency.map_or(0, |currency| currency.scale), out);
    out.extend_from_slice(b"\",\"currency\":");
    match currency {
        Some(currency) => string_append(&currency.code, out),
        None => string_append(&format!("ledger:{}", transfer.ledger), out),
    }
    out.extend_from_slice(b",\"hold_id\":");
    if transfer.pending_id.0 != 0 {
        id_quoted(transfer.pending_id.0, out);
    } else {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"expires_at\":");
    if transfer.flags.contains(TransferFlags::PENDING) && transfer.timeout_s > 0 {
        out.push(b'"');
        rfc3339_append(transfer.timestamp + u64::from(transfer.timeout_s) * 1_000_000_000, out);
        out.push(b'"');
    } else {
        out.extend_from_slice(b"null");
    }
    out.push(b'}');
}

/// Appends the JSON of a `BatchResponse` with one result per outcome, in order.
pub fn batch_json(currencies: &Currencies, outcomes: &[Outcome], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"results\":[");
    for (index, outcome) in outcomes.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"index\":");
        decimal_append(index as u128, out);
        match outcome {
            Outcome::Done { record, .. } => {
                out.extend_from_slice(b",\"status\":201,\"transfer\":");
                transfer_json(currencies, record, out);
                out.extend_from_slice(b",\"error\":null}");
            }
            Outcome::Failed { error, .. } => {
                out.extend_from_slice(b",\"status\":");
                decimal_append(u128::from(error.status.as_u16()), out);
                out.extend_from_slice(b",\"transfer\":null,\"error\":");
                let detail = BatchError { code: error.code.into(), message: error.message.clone() };
                serde_json::to_writer(&mut *out, &detail).expect("a Vec takes every write");
                out.push(b'}');
            }
        }
    }
    out.extend_from_slice(b"]}");
}

fn id_quoted(value: u128, out: &mut Vec<u8>) {
    out.push(b'"');
    out.extend_from_slice(&id_bytes(value));
    out.push(b'"');
}

fn string_append(text: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, text).expect("a Vec takes every write");
}

fn decimal_append(value: u128, out: &mut Vec<u8>) {
    let mut digits = [0u8; 39];
    let start = decimal_digits(value, &mut digits);
    out.extend_from_slice(&digits[start..]);
}

/// Writes `value`'s decimal digits at the end of `digits`; returns where they start. In u64
/// while the value fits (indexes, amounts, times): a u128 division is a library call.
fn decimal_digits(mut value: u128, digits: &mut [u8; 39]) -> usize {
    let mut start = digits.len();
    while value > u128::from(u64::MAX) {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    let mut value = value as u64;
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return start;
        }
    }
}

/// `amount_format(minor, scale)`, appended.
fn amount_append(minor: u128, scale: u8, out: &mut Vec<u8>) {
    let mut digits = [0u8; 39];
    let start = decimal_digits(minor, &mut digits);
    let digits = &digits[start..];
    let scale = usize::from(scale);
    if scale == 0 {
        out.extend_from_slice(digits);
        return;
    }
    if digits.len() <= scale {
        out.extend_from_slice(b"0.");
        out.resize(out.len() + scale - digits.len(), b'0');
        out.extend_from_slice(digits);
    } else {
        let split = digits.len() - scale;
        out.extend_from_slice(&digits[..split]);
        out.push(b'.');
        out.extend_from_slice(&digits[split..]);
    }
}

/// `rfc3339(ns)`, appended.
fn rfc3339_append(ns: u64, out: &mut Vec<u8>) {
    let seconds = ns / 1_000_000_000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = walletd_core::calendar::civil_from_days(days as i64);
    assert!((1970..=9999).contains(&year), "a u64 of ns since 1970 ends in 2554");
    fixed_digits_append(year as u64, 4, out);
    out.push(b'-');
    fixed_digits_append(u64::from(month), 2, out);
    out.push(b'-');
    fixed_digits_append(u64::from(day), 2, out);
    out.push(b'T');
    fixed_digits_append(second_of_day / 3600, 2, out);
    out.push(b':');
    fixed_digits_append(second_of_day / 60 % 60, 2, out);
    out.push(b':');
    fixed_digits_append(second_of_day % 60, 2, out);
    out.push(b'.');
    fixed_digits_append(ns % 1_000_000_000, 9, out);
    out.push(b'Z');
}

/// Appends the `width` last decimal digits of `value`, zero-padded (`value < 10^width`).
fn fixed_digits_append(mut value: u64, width: usize, out: &mut Vec<u8>) {
    assert!(width <= 9);
    let mut digits = [b'0'; 9];
    for digit in digits[..width].iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
    assert_eq!(value, 0, "the value has at most `width` digits");
    out.extend_from_slice(&digits[..width]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{transfer_view, BatchResponse, BatchResult};
    use crate::error::ApiError;
    use proptest::prelude::*;
    use walletd_core::{AccountId, Amount, Transfer, TransferId, TransferStatus};

    fn currencies() -> Currencies {
        Currencies::parse(crate::currency::CURRENCIES_DEFAULT).unwrap()
    }

    fn record_of(seed: (u128, u128, u128, u128, u64, u32, u16, u8, u32)) -> TransferRecord {
        let (id, debit, credit, amount, timestamp, timeout_s, flags, status, ledger) = seed;
        let statuses = [
            TransferStatus::Posted,
            TransferStatus::Pending,
            TransferStatus::PendingPosted,
            TransferStatus::PendingVoided,
            TransferStatus::PendingExpired,
            TransferStatus::Voided,
        ];
        let ledgers = [840, 392, 48, 978, ledger];
        TransferRecord {
            transfer: Transfer {
                id: TransferId(id),
                debit_account_id: AccountId(debit),
                credit_account_id: AccountId(credit),
                amount: Amount(amount),
                pending_id: TransferId(if flags & 1 == 0 { 0 } else { id ^ debit }),
                timeout_s,
                ledger: ledgers[(ledger % 5) as usize],
                code: (flags >> 4) % 8,
                flags: TransferFlags(flags & TransferFlags::MASK),
                timestamp,
                ..Transfer::default()
            },
            status: statuses[usize::from(status) % statuses.len()],
        }
    }

    proptest! {
        #[test]
        fn a_transfer_is_written_as_serde_writes_its_view(
            seed in (any::<u128>(), any::<u128>(), any::<u128>(), any::<u128>(), 0..u64::MAX / 2, any::<u32>(),
                any::<u16>(), any::<u8>(), any::<u32>())
        ) {
            let currencies = currencies();
            let record = record_of(seed);
            let mut fast = Vec::new();
            transfer_json(&currencies, &record, &mut fast);
            let serde = serde_json::to_vec(&transfer_view(&currencies, &record)).unwrap();
            prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(serde).unwrap());
        }
    }

    #[test]
    fn a_batch_is_written_as_serde_writes_its_response() {
        let currencies = currencies();
        let small = [(1, 2, 3, 5, 1_700_000_000_123_456_789, 0, 0, 0, 840), (7, 8, 9, 0, 1, 60, 2, 1, 392)];
        let mut outcomes: Vec<Outcome> =
            small.iter().map(|&seed| Outcome::Done { record: record_of(seed), replayed: false }).collect();
        let message = "a \"quoted\" message\nwith a newline";
        outcomes.insert(1, Outcome::Failed { id: None, error: ApiError::new(422, "exceeds_credits", message) });
        let mut fast = Vec::new();
        batch_json(&currencies, &outcomes, &mut fast);
        let results = outcomes
            .iter()
            .enumerate()
            .map(|(index, outcome)| match outcome {
                Outcome::Done { record, .. } => BatchResult {
                    index: index as u32,
                    status: 201,
                    transfer: Some(transfer_view(&currencies, record)),
                    error: None,
                },
                Outcome::Failed { error, .. } => BatchResult {
                    index: index as u32,
                    status: error.status.as_u16(),
                    transfer: None,
                    error: Some(BatchError { code: error.code.into(), message: error.message.clone() }),
                },
            })
            .collect();
        let serde = serde_json::to_vec(&BatchResponse { results }).unwrap();
        assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(serde).unwrap());
    }
}
