//! PostgreSQL's binary formats for what the engine stores: 128-bit ids as `uuid` (16 bytes,
//! big-endian), amounts as `numeric` (base-10000 digits), and the binary `COPY` stream that the
//! projection builds on its follower thread, so that the async writer only moves bytes.
//!
//! Binary `COPY` (PostgreSQL docs, "COPY … BINARY"):
//!
//! ```text
//! header   11 bytes "PGCOPY\n\xff\r\n\0", i32 flags (0), i32 header extension length (0)
//! row      i16 field count, then per field: i32 length (-1 = NULL) and that many bytes
//! trailer  i16 -1
//! ```
//!
//! `numeric` on the wire: i16 ndigits, i16 weight (of the first digit, in base 10000), u16 sign
//! (0x0000 positive, 0x4000 negative), i16 dscale (0 for integers), then ndigits i16 digits, most
//! significant first; trailing zero digits are dropped (the weight says where the point is).

use bytes::{BufMut, BytesMut};
use postgres_types::{FromSql, IsNull, ToSql, Type};
use std::error::Error;

const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const NUMERIC_NEGATIVE: u16 = 0x4000;

/// A 128-bit engine id as a PostgreSQL `uuid`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid128(pub u128);

impl std::fmt::Display for Uuid128 {
    /// As PostgreSQL prints a uuid: 8-4-4-4-12 hex digits.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = format!("{:032x}", self.0);
        write!(f, "{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
    }
}

impl ToSql for Uuid128 {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_u128(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }

    postgres_types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Uuid128 {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Uuid128, Box<dyn Error + Sync + Send>> {
        let bytes: [u8; 16] = raw.try_into().map_err(|_| format!("a uuid of {} bytes", raw.len()))?;
        Ok(Uuid128(u128::from_be_bytes(bytes)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }
}

/// An integer as a PostgreSQL `numeric`, for parameters (reads cast numerics to text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Numeric(pub i128);

impl ToSql for Numeric {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        numeric_put(out, self.0 < 0, self.0.unsigned_abs());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    postgres_types::to_sql_checked!();
}

/// Writes the `numeric` encoding of ±`magnitude` (without a length prefix).
pub fn numeric_put(out: &mut BytesMut, negative: bool, magnitude: u128) {
    // u128::MAX has 39 decimal digits: at most 10 base-10000 digits.
    let mut digits = [0i16; 10];
    let mut count = 0;
    let mut rest = magnitude;
    while rest > 0 {
        digits[count] = (rest % 10_000) as i16;
        rest /= 10_000;
        count += 1;
    }
    assert!(count <= digits.len());
    let weight = count as i16 - 1;
    // Digits are least significant first here; drop trailing (least significant) zeros.
    let zeros = digits[..count].iter().take_while(|digit| **digit == 0).count();
    let kept = &digits[zeros..count];
    out.put_i16(kept.len() as i16);
    out.put_i16(if count == 0 { 0 } else { weight });
    out.put_u16(if negative && magnitude != 0 { NUMERIC_NEGATIVE } else { 0 });
    out.put_i16(0);
    for digit in kept.iter().rev() {
        out.put_i16(*digit);
    }
}

/// The byte length of `numeric_put(magnitude)`.
fn numeric_size(magnitude: u128) -> usize {
    let mut count = 0;
    let mut rest = magnitude;
    while rest > 0 {
        rest /= 10_000;
        count += 1;
    }
    let mut zeros = 0;
    let mut rest = magnitude;
    while rest > 0 && rest % 10_000 == 0 {
        rest /= 10_000;
        zeros += 1;
    }
    8 + 2 * (count - zeros)
}

/// Rows of one table in the binary `COPY` format, built on the follower's thread.
#[derive(Debug)]
pub struct CopyBuffer {
    bytes: BytesMut,
    fields_per_row: i16,
    /// Fields written in the row being built.
    fields_in_row: i16,
    rows_count: usize,
}

impl CopyBuffer {
    pub fn new(fields_per_row: i16) -> CopyBuffer {
        assert!(fields_per_row > 0);
        let mut bytes = BytesMut::with_capacity(1 << 16);
        bytes.put_slice(COPY_SIGNATURE);
        bytes.put_i32(0);
        bytes.put_i32(0);
        CopyBuffer { bytes, fields_per_row, fields_in_row: fields_per_row, rows_count: 0 }
    }

    pub fn row_begin(&mut self) {
        assert_eq!(self.fields_in_row, self.fields_per_row, "the previous row is complete");
        self.bytes.put_i16(self.fields_per_row);
        self.fields_in_row = 0;
        self.rows_count += 1;
    }

    fn field(&mut self, size: usize) {
        assert!(self.fields_in_row < self.fields_per_row, "more fields than the table has");
        self.fields_in_row += 1;
        self.bytes.put_i32(size as i32);
    }

    pub fn uuid(&mut self, value: u128) {
        self.field(16);
        self.bytes.put_u128(value);
    }

    pub fn uuid_or_null(&mut self, value: u128) {
        if value == 0 {
            self.null();
        } else {
            self.uuid(value);
        }
    }

    pub fn i64(&mut self, value: i64) {
        self.field(8);
        self.bytes.put_i64(value);
    }

    pub fn i32(&mut self, value: i32) {
        self.field(4);
        self.bytes.put_i32(value);
    }

    /// A PostgreSQL `"char"` (one byte).
    pub fn char(&mut self, value: u8) {
        self.field(1);
        self.bytes.put_u8(value);
    }

    pub fn text(&mut self, value: &str) {
        self.field(value.len());
        self.bytes.put_slice(value.as_bytes());
    }

    pub fn numeric(&mut self, value: u128) {
        self.field(numeric_size(value));
        numeric_put(&mut self.bytes, false, value);
    }

    pub fn null(&mut self) {
        assert!(self.fields_in_row < self.fields_per_row, "more fields than the table has");
        self.fields_in_row += 1;
        self.bytes.put_i32(-1);
    }

    pub fn rows_count(&self) -> usize {
        self.rows_count
    }

    pub fn is_empty(&self) -> bool {
        self.rows_count == 0
    }

    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The whole stream, trailer included.
    pub fn finish(mut self) -> bytes::Bytes {
        assert_eq!(self.fields_in_row, self.fields_per_row, "the last row is complete");
        self.bytes.put_i16(-1);
        self.bytes.freeze()
    }
}

/// An engine u64 as PostgreSQL's signed bigint, refusing values it cannot hold.
pub fn i64_of(value: u64) -> i64 {
    i64::try_from(value).expect("engine timestamps and ops fit in a bigint until the year 2262")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(negative: bool, magnitude: u128) -> Vec<u8> {
        let mut out = BytesMut::new();
        numeric_put(&mut out, negative, magnitude);
        assert_eq!(out.len(), numeric_size(magnitude), "size of {magnitude}");
        out.to_vec()
    }

    #[test]
    fn numerics_encode_as_postgres_does() {
        assert_eq!(numeric_bytes(false, 0), [0, 0, 0, 0, 0, 0, 0, 0]);
        // 1: one digit, weight 0.
        assert_eq!(numeric_bytes(false, 1), [0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        // 10000: digits [1, 0] → trailing zero dropped, weight 1.
        assert_eq!(numeric_bytes(false, 10_000), [0, 1, 0, 1, 0, 0, 0, 0, 0, 1]);
        // 12345678: [1234, 5678], weight 1.
        assert_eq!(numeric_bytes(false, 12_345_678), [0, 2, 0, 1, 0, 0, 0, 0, 0x04, 0xd2, 0x16, 0x2e]);
        assert_eq!(numeric_bytes(true, 1), [0, 1, 0, 0, 0x40, 0, 0, 0, 0, 1]);
        assert_eq!(numeric_bytes(false, u128::MAX).len(), 8 + 2 * 10);
    }

    #[test]
    fn uuids_print_as_postgres_does() {
        assert_eq!(Uuid128(1).to_string(), "00000000-0000-0000-0000-000000000001");
        assert_eq!(Uuid128(u128::MAX << 120).to_string(), "ff000000-0000-0000-0000-000000000000");
    }
}
