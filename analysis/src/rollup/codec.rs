//! LEB128 varints and a bounds-checked reader: the primitives of the
//! roll-up blobs. Nothing here allocates more than the input's length.

use super::RollupError;

/// Appends `v` as an unsigned LEB128 varint (7 bits a byte, low first).
pub(crate) fn put_u128(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` as a varint.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    put_u128(out, u128::from(v));
}

/// Appends a signed value zigzag-encoded (small magnitudes stay short).
pub(crate) fn put_i32(out: &mut Vec<u8>, v: i32) {
    put_u64(out, u64::from(((v << 1) ^ (v >> 31)) as u32));
}

/// Appends a length-prefixed UTF-8 string.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over a blob; every read checks the remaining length.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// One byte.
    pub(crate) fn byte(&mut self, field: &'static str) -> Result<u8, RollupError> {
        let b = *self.buf.get(self.pos).ok_or(RollupError::Truncated {
            at: self.pos,
            field,
        })?;
        self.pos += 1;
        Ok(b)
    }

    /// A varint of up to 128 bits (at most 19 bytes), in its shortest form
    /// (no final zero byte after the first), so every value has one
    /// encoding.
    pub(crate) fn u128(&mut self, field: &'static str) -> Result<u128, RollupError> {
        let at = self.pos;
        let mut v: u128 = 0;
        for shift in (0..128).step_by(7) {
            let b = self
                .byte(field)
                .map_err(|_| RollupError::Truncated { at, field })?;
            let bits = u128::from(b & 0x7f);
            if shift == 126 && bits > 0b11 {
                return Err(RollupError::BadVarint { at, field });
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(RollupError::BadVarint { at, field });
                }
                return Ok(v);
            }
        }
        Err(RollupError::BadVarint { at, field })
    }

    /// A varint that must fit in 64 bits.
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, RollupError> {
        let at = self.pos;
        let v = self.u128(field)?;
        u64::try_from(v).map_err(|_| RollupError::BadVarint { at, field })
    }

    /// A zigzag varint that must fit in an `i32`.
    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, RollupError> {
        let at = self.pos;
        let z =
            u32::try_from(self.u64(field)?).map_err(|_| RollupError::BadVarint { at, field })?;
        Ok(((z >> 1) as i32) ^ -((z & 1) as i32))
    }

    /// A count of items that each take at least one byte: larger than what
    /// is left means a corrupt blob, refused before anything is allocated.
    pub(crate) fn len(&mut self, field: &'static str) -> Result<usize, RollupError> {
        let at = self.pos;
        let n = self.u64(field)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(RollupError::Truncated { at, field }),
        }
    }

    /// A length-prefixed UTF-8 string.
    pub(crate) fn str(&mut self, field: &'static str) -> Result<&'a str, RollupError> {
        let at = self.pos;
        let n = self.len(field)?;
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        std::str::from_utf8(bytes).map_err(|_| RollupError::Invalid {
            at,
            field,
            reason: "not UTF-8",
        })
    }

    /// Fails unless the whole input was read.
    pub(crate) fn finish(&self) -> Result<(), RollupError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(RollupError::TrailingBytes {
                at: self.pos,
                extra,
            }),
        }
    }

    /// An `Invalid` error at the current offset.
    pub(crate) fn invalid(&self, field: &'static str, reason: &'static str) -> RollupError {
        RollupError::Invalid {
            at: self.pos,
            field,
            reason,
        }
    }
}
