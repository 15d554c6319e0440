//! Base-128 varints as the Thinger device code reads and writes them.
//!
//! Seven data bits per byte, least significant group first; bit 7 set means another byte
//! follows. Sizes, stream ids and flags are 32-bit varints (at most 5 bytes, value ≤ u32::MAX);
//! value varints are 64-bit (at most 10 bytes, the tenth carrying only the top bit).

use crate::{BufferFull, Sink};

/// Longest 64-bit varint.
pub const MAX_LEN_64: usize = 10;
/// Longest 32-bit varint.
pub const MAX_LEN_32: usize = 5;

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The input ended inside the varint.
    Truncated,
    /// More bytes than the limit, or a value wider than the target integer.
    Overflow,
}

/// Encodes `v` into `out`, returning the number of bytes used.
#[inline]
pub fn encode_u64(mut v: u64, out: &mut [u8; MAX_LEN_64]) -> usize {
    let mut n = 0;
    for slot in out.iter_mut() {
        n += 1;
        if v < 0x80 {
            *slot = v as u8;
            break;
        }
        *slot = (v as u8 & 0x7F) | 0x80;
        v >>= 7;
    }
    n
}

/// Writes `v` as a varint to `sink`.
#[inline]
pub fn write_u64<S: Sink + ?Sized>(sink: &mut S, v: u64) -> Result<(), BufferFull> {
    if v < 0x80 {
        return sink.put_u8(v as u8);
    }
    let mut buf = [0u8; MAX_LEN_64];
    let n = encode_u64(v, &mut buf);
    sink.put(buf.get(..n).unwrap_or_default())
}

/// How many bytes `v` takes as a varint.
#[inline]
pub const fn len_u64(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads a 64-bit varint from the start of `buf`: the value and the bytes consumed.
#[inline]
pub fn decode_u64(buf: &[u8]) -> Result<(u64, usize), VarintError> {
    // Fast path: one byte.
    match buf.first() {
        None => return Err(VarintError::Truncated),
        Some(&b) if b < 0x80 => return Ok((u64::from(b), 1)),
        Some(_) => {}
    }
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(MAX_LEN_64) {
        let group = u64::from(b & 0x7F);
        if i == MAX_LEN_64 - 1 && b > 1 {
            return Err(VarintError::Overflow);
        }
        value |= group << (7 * i);
        if b < 0x80 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() < MAX_LEN_64 {
        Err(VarintError::Truncated)
    } else {
        Err(VarintError::Overflow)
    }
}

/// Reads a 32-bit varint (sizes, stream ids, flags): at most 5 bytes and ≤ `u32::MAX`.
#[inline]
pub fn decode_u32(buf: &[u8]) -> Result<(u32, usize), VarintError> {
    let limited = buf.get(..MAX_LEN_32).unwrap_or(buf);
    match decode_u64(limited) {
        Ok((v, n)) => u32::try_from(v).map(|v| (v, n)).map_err(|_| VarintError::Overflow),
        // Five continuation bytes in a row: too long for a 32-bit varint.
        Err(VarintError::Truncated) if limited.len() == MAX_LEN_32 => Err(VarintError::Overflow),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> ([u8; MAX_LEN_64], usize) {
        let mut b = [0; MAX_LEN_64];
        let n = encode_u64(v, &mut b);
        (b, n)
    }

    #[test]
    fn spec_examples() {
        let cases: &[(u64, &[u8])] = &[
            (1, &[0x01]),
            (150, &[0x96, 0x01]),
            (300, &[0xAC, 0x02]),
            (1000, &[0xE8, 0x07]),
            (u64::MAX, &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        ];
        for &(v, bytes) in cases {
            let (b, n) = enc(v);
            assert_eq!(&b[..n], bytes, "encode {v}");
            assert_eq!(len_u64(v), bytes.len());
            assert_eq!(decode_u64(bytes), Ok((v, bytes.len())), "decode {v}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(decode_u64(&[]), Err(VarintError::Truncated));
        assert_eq!(decode_u64(&[0x80]), Err(VarintError::Truncated));
        assert_eq!(decode_u64(&[0xFF; 10]), Err(VarintError::Overflow));
        assert_eq!(
            decode_u64(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]),
            Err(VarintError::Overflow)
        );
        assert_eq!(decode_u32(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), Ok((u32::MAX, 5)));
        assert_eq!(decode_u32(&[0xFF, 0xFF, 0xFF, 0xFF, 0x1F]), Err(VarintError::Overflow));
        assert_eq!(decode_u32(&[0x80; 6]), Err(VarintError::Overflow));
        assert_eq!(decode_u32(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(len_u64(0), 1);
        assert_eq!(len_u64(127), 1);
        assert_eq!(len_u64(128), 2);
    }
}
