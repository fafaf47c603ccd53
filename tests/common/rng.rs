//! The tests' pseudo-random numbers: splitmix64 and what the fuzzers draw
//! from it. Deterministic by seed.

/// splitmix64: tiny, fast, and every seed gives a good stream.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        match (hi - lo).checked_add(1) {
            Some(n) => lo + self.below(n),
            None => self.next(),
        }
    }

    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.index(xs.len())]
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }

    /// An integer from the classic list of boundary values: 0, 1, the
    /// maxima of each width, i64::MIN, powers of two and their neighbours,
    /// and the sizes this format cares about (4096, 32768, 2^32, 2^48).
    pub fn interesting(&mut self) -> u64 {
        #[rustfmt::skip]
        const FIXED: [u64; 34] = [
            0, 1, 2, 3, 7, 8, 16, 0x7f, 0x80, 0xff, 0x100,
            4064, 4072, 4095, 4096, 4097, 8191, 32767, 32768, 32769, 0xffff, 0x1_0000,
            0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x1_0000_0000, 0x1_0000_0001,
            (1 << 48) - 1, 1 << 48, (1 << 48) + 1,
            i64::MAX as u64, i64::MIN as u64, u64::MAX - 1, u64::MAX,
        ];
        match self.below(4) {
            0 => 1u64 << self.below(64),
            1 => (1u64 << self.below(64)).wrapping_add(self.pick(&[1, u64::MAX])),
            _ => self.pick(&FIXED),
        }
    }

    /// Mostly a plain number below `max`, sometimes a boundary value.
    pub fn number(&mut self, max: u64) -> u64 {
        if self.chance(1, 8) {
            self.interesting()
        } else {
            self.below(max)
        }
    }
}
