//! Protobuf's wire format, read field by field from a stream: just enough to walk an ONNX
//! `ModelProto` and its main `GraphProto` one node and one initializer at a time, so loading never
//! holds the whole file and its decoded form together (viptr_tiny's 31 000 decoded nodes cost 50 MB
//! beside its 20 MB file) and every weight gets its own 4-byte-aligned buffer that Kiln can view
//! without copying (a weight at an odd offset of one file-sized buffer had to be copied: sar_resnet31
//! peaked at 1.8× its file). The messages themselves are still decoded by onnx-ir's `protobuf` types.

use std::io::{ErrorKind as IoKind, Read};

use crate::error::{Error, Result, bail, err};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A protobuf stream and the number of bytes read from it.
pub struct Wire<R> {
    r: R,
    pos: u64,
}

impl<R: Read> Wire<R> {
    pub fn new(r: R) -> Self {
        Self { r, pos: 0 }
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            IoKind::UnexpectedEof => err!(Decode, "the protobuf ends inside a field (truncated file?)"),
            _ => err!(Io, "cannot read model: {e}"),
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let mut b = [0u8];
            self.read(&mut b)?;
            v |= u64::from(b[0] & 0x7f) << shift;
            if b[0] < 0x80 {
                return Ok(v);
            }
        }
        bail!(Decode, "malformed varint at byte {}", self.pos)
    }

    /// The next field's number and wire type, or `None` at `end`.
    pub fn field(&mut self, end: u64) -> Result<Option<(u32, u8)>> {
        if self.pos >= end {
            return Ok(None);
        }
        let tag = self.varint()?;
        let (field, wire) = ((tag >> 3) as u32, (tag & 7) as u8);
        if field == 0 || !matches!(wire, VARINT | FIXED64 | LEN | FIXED32) {
            bail!(Decode, "not an ONNX protobuf: bad field tag {tag} at byte {}", self.pos);
        }
        Ok(Some((field, wire)))
    }

    /// The length of a length-delimited field, checked against the end of its message.
    pub fn len(&mut self, end: u64) -> Result<u64> {
        let n = self.varint()?;
        if n > end.saturating_sub(self.pos) {
            bail!(Decode, "a field of {n} bytes at byte {} runs past its message (truncated file?)", self.pos);
        }
        Ok(n)
    }

    /// A length-delimited field's payload as its own buffer. With `align`, the payload of that
    /// field inside it (a tensor's `raw_data`) starts on a 4-byte boundary of the allocation.
    pub fn message(&mut self, end: u64, align: Option<u32>) -> Result<bytes::Bytes> {
        let n = self.len(end)? as usize;
        let Some(field) = align else {
            let mut buf = vec![0u8; n];
            self.read(&mut buf)?;
            return Ok(buf.into());
        };
        let mut buf = vec![0u8; n + 3];
        self.read(&mut buf[3..])?;
        let start = payload_offset(&buf[3..], field).map_or(3, |off| (4 - off % 4) % 4);
        buf.copy_within(3.., start);
        Ok(bytes::Bytes::from(buf).slice(start..start + n))
    }

    /// Copies the field whose tag was just read into `out` as protobuf bytes (tag included).
    pub fn copy_field(&mut self, field: u32, wire: u8, out: &mut Vec<u8>, end: u64) -> Result<()> {
        put_varint(out, (u64::from(field) << 3) | u64::from(wire));
        match wire {
            VARINT => {
                let v = self.varint()?;
                put_varint(out, v);
            }
            LEN => {
                let n = self.len(end)?;
                put_varint(out, n);
                let at = out.len();
                out.resize(at + n as usize, 0);
                self.read(&mut out[at..])?;
            }
            _ => {
                let at = out.len();
                out.resize(at + if wire == FIXED64 { 8 } else { 4 }, 0);
                self.read(&mut out[at..])?;
            }
        }
        if self.pos > end {
            bail!(Decode, "a field runs past its message at byte {} (truncated file?)", self.pos);
        }
        Ok(())
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Where the payload of length-delimited field `field` starts in the message `m`, if it is there.
fn payload_offset(m: &[u8], field: u32) -> Option<usize> {
    let mut w = Wire::new(m);
    let end = m.len() as u64;
    while let Ok(Some((f, wire))) = w.field(end) {
        match wire {
            LEN => {
                let n = w.len(end).ok()?;
                if f == field {
                    return Some(w.pos() as usize);
                }
                w.skip(n)?;
            }
            VARINT => {
                w.varint().ok()?;
            }
            _ => w.skip(if wire == FIXED64 { 8 } else { 4 })?,
        }
    }
    None
}

impl Wire<&[u8]> {
    fn skip(&mut self, n: u64) -> Option<()> {
        let n = usize::try_from(n).ok()?;
        self.r = self.r.get(n..)?;
        self.pos += n as u64;
        Some(())
    }
}

/// Maps protobuf's decoding errors to Kiln's.
pub fn decode_error(what: &str, e: impl std::fmt::Display) -> Error {
    err!(Decode, "not a valid ONNX protobuf ({what}): {e}")
}
