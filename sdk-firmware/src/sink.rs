//! Where encoders write: a growable `Vec<u8>` (with `alloc`) or a fixed slice (no allocator).

/// The output buffer was too small for what was being encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferFull;

impl core::fmt::Display for BufferFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("output buffer full")
    }
}

impl core::error::Error for BufferFull {}

/// A byte sink for the encoders.
pub trait Sink {
    /// Appends `bytes`, or fails without a partial write being meaningful to the caller.
    fn put(&mut self, bytes: &[u8]) -> Result<(), BufferFull>;

    /// Appends one byte.
    fn put_u8(&mut self, byte: u8) -> Result<(), BufferFull> {
        self.put(&[byte])
    }
}

#[cfg(feature = "alloc")]
impl Sink for alloc::vec::Vec<u8> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), BufferFull> {
        self.extend_from_slice(bytes);
        Ok(())
    }

    fn put_u8(&mut self, byte: u8) -> Result<(), BufferFull> {
        self.push(byte);
        Ok(())
    }
}

/// Writes into a caller-provided slice; for devices without an allocator.
#[derive(Debug)]
pub struct SliceSink<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceSink<'a> {
    /// A sink that fills `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// How many bytes were written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), BufferFull> {
        let end = self.len.checked_add(bytes.len()).ok_or(BufferFull)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(BufferFull)?;
        dst.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}
