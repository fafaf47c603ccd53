//! Little-endian field access on byte slices, bounds-checked by the caller's
//! fixed layouts: every accessor takes a slice long enough by construction
//! (structures are decoded from whole blocks or fixed-size records), and
//! panics are impossible for offsets inside them.

/// Reads little-endian integers at fixed offsets.
pub struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    /// `N` bytes at `off`, or zeros past the end (a short input decodes as
    /// zeros and fails validation instead of panicking).
    pub fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(s) = self.0.get(off..off + N) {
            out.copy_from_slice(s);
        }
        out
    }
    pub fn u8(&self, off: usize) -> u8 {
        self.bytes::<1>(off)[0]
    }
    pub fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.bytes(off))
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes(off))
    }
    pub fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.bytes(off))
    }
    pub fn i64(&self, off: usize) -> i64 {
        i64::from_le_bytes(self.bytes(off))
    }
}

/// Writes little-endian integers at fixed offsets into a buffer the caller
/// sized for its layout.
pub struct Writer<'a>(pub &'a mut [u8]);

#[allow(
    clippy::indexing_slicing,
    reason = "encoders write constant offsets of their own layout into buffers they sized; no disk byte picks an offset"
)]
impl Writer<'_> {
    pub fn bytes(&mut self, off: usize, v: &[u8]) {
        self.0[off..off + v.len()].copy_from_slice(v);
    }
    pub fn u8(&mut self, off: usize, v: u8) {
        self.0[off] = v;
    }
    pub fn u16(&mut self, off: usize, v: u16) {
        self.bytes(off, &v.to_le_bytes());
    }
    pub fn u32(&mut self, off: usize, v: u32) {
        self.bytes(off, &v.to_le_bytes());
    }
    pub fn u64(&mut self, off: usize, v: u64) {
        self.bytes(off, &v.to_le_bytes());
    }
    pub fn i64(&mut self, off: usize, v: i64) {
        self.bytes(off, &v.to_le_bytes());
    }
}
