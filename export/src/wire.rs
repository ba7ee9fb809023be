//! The Kafka protocol's primitive encodings, both ways, for the exporter's own producer
//! (`produce.rs`) and its reader of the partitions' ends (`tail.rs`): one cursor over answer
//! bytes that says what it was reading when they ran out, and the writers of strings and
//! varints. Everything is big-endian; varints are zig-zag base-128 (the record format's),
//! unsigned varints plain base-128 (the flexible versions' lengths and tagged fields).
//!
//! ```text
//! int8 / int16 / int32 / int64   big-endian, two's complement
//! string                         length int16 | UTF-8 bytes (length -1: null)
//! varint / varlong               zig-zag, then 7 bits a byte, low first, high bit = more
//! unsigned varint                7 bits a byte, low first, high bit = more
//! varbytes                       length varint | bytes (length -1: null)
//! tagged fields                  count uvarint | { tag uvarint | size uvarint | data }
//! ```

use std::ops::Range;

/// A cursor over answer bytes; every read says what it was reading when the bytes ran out.
pub(crate) struct Wire<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Wire<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Wire<'a> {
        Wire { bytes, at: 0 }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    pub(crate) fn take(&mut self, count: usize, what: &str) -> Result<&'a [u8], String> {
        let range: Option<Range<usize>> =
            self.at.checked_add(count).filter(|end| *end <= self.bytes.len()).map(|end| self.at..end);
        let range = range.ok_or_else(|| format!("bytes that end inside {what} (at {})", self.at))?;
        self.at = range.end;
        assert!(self.at <= self.bytes.len(), "the cursor stays inside its bytes");
        Ok(&self.bytes[range])
    }

    pub(crate) fn i8(&mut self, what: &str) -> Result<i8, String> {
        Ok(self.take(1, what)?[0] as i8)
    }

    pub(crate) fn i16(&mut self, what: &str) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }

    pub(crate) fn i32(&mut self, what: &str) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    pub(crate) fn i64(&mut self, what: &str) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    pub(crate) fn uvarint(&mut self, what: &str) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1, what)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("{what}: an unsigned varint longer than 10 bytes"))
    }

    /// A zig-zag varint (or varlong).
    pub(crate) fn varint(&mut self, what: &str) -> Result<i64, String> {
        let raw = self.uvarint(what)?;
        Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }

    /// Bytes with a varint length; None for a null (negative length).
    pub(crate) fn varbytes(&mut self, what: &str) -> Result<Option<&'a [u8]>, String> {
        let size = self.varint(what)?;
        if size < 0 {
            return Ok(None);
        }
        let size = usize::try_from(size).map_err(|_| format!("{what} of {size} bytes"))?;
        Ok(Some(self.take(size, what)?))
    }

    /// Tagged fields (flexible versions): a count, then each tag with its sized data.
    pub(crate) fn tagged_fields_skip(&mut self, what: &str) -> Result<(), String> {
        let count = self.uvarint(what)?;
        for _ in 0..count.min(1 << 10) {
            self.uvarint(what)?;
            let size = self.uvarint(what)?;
            self.take(usize::try_from(size).map_err(|_| format!("{what}: {size} bytes"))?, what)?;
        }
        Ok(())
    }

    /// A non-null string with an i16 length.
    pub(crate) fn string(&mut self, what: &str) -> Result<String, String> {
        let size = self.i16(what)?;
        let size = usize::try_from(size).map_err(|_| format!("a null {what}"))?;
        String::from_utf8(self.take(size, what)?.to_vec()).map_err(|_| format!("{what} not UTF-8"))
    }
}

/// A string with an i16 length.
pub(crate) fn string_put(out: &mut Vec<u8>, text: &str) {
    assert!(text.len() <= i16::MAX as usize, "a protocol string fits an i16 length");
    out.extend_from_slice(&(text.len() as i16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// A zig-zag varint.
pub(crate) fn varint_put(out: &mut Vec<u8>, value: i64) {
    let mut raw = zigzag(value);
    while raw >= 0x80 {
        out.push((raw as u8) | 0x80);
        raw >>= 7;
    }
    out.push(raw as u8);
}

/// The bytes `varint_put` writes for `value`.
pub(crate) fn varint_size(value: i64) -> usize {
    let bits = 64 - zigzag(value).leading_zeros() as usize;
    bits.max(1).div_ceil(7)
}

/// Bytes with a varint length.
pub(crate) fn varbytes_put(out: &mut Vec<u8>, bytes: &[u8]) {
    varint_put(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

pub(crate) fn varbytes_size(bytes: &[u8]) -> usize {
    varint_size(bytes.len() as i64) + bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_zig_zag_sized_right_and_read_back() {
        for value in [0i64, 1, -1, 63, 64, -64, -65, 300, i32::MAX as i64, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            varint_put(&mut out, value);
            assert_eq!(out.len(), varint_size(value), "{value}");
            let mut wire = Wire::new(&out);
            assert_eq!(wire.varint("a value"), Ok(value));
            assert_eq!(wire.remaining(), 0);
        }
        let mut out = Vec::new();
        varint_put(&mut out, 300);
        assert_eq!(out, [0xd8, 0x04]); // zig-zag 600
        out.clear();
        varint_put(&mut out, -1);
        assert_eq!(out, [0x01]);
    }

    #[test]
    fn reads_say_what_ran_out_and_nulls_are_told_apart() {
        let mut out = Vec::new();
        string_put(&mut out, "topic");
        varbytes_put(&mut out, b"key");
        varint_put(&mut out, -1);
        let mut wire = Wire::new(&out);
        assert_eq!(wire.string("a name"), Ok("topic".to_string()));
        assert_eq!(wire.varbytes("a key"), Ok(Some(&b"key"[..])));
        assert_eq!(wire.varbytes("a value"), Ok(None));
        assert_eq!(wire.remaining(), 0);
        let error = wire.i32("the count").expect_err("nothing left");
        assert!(error.contains("the count"), "{error}");
        let mut cut = Wire::new(&out[..4]);
        assert!(cut.string("a name").is_err(), "a string cut short");
        assert!(Wire::new(&[0xff; 11]).uvarint("a length").is_err(), "an endless varint");
    }
}
