//! Randomness, from one source: the kernel's generator (`getrandom`). Span and trace
//! ids take their bytes from it directly; retry jitter, which needs many cheap numbers,
//! runs a small generator seeded from it.

/// `N` random bytes, never all zero (an all-zero trace or span id is invalid).
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    loop {
        // SAFETY: getrandom writes at most N bytes into our N-byte buffer; a short or
        // failed read leaves zeros, caught below.
        unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), N, 0) };
        if bytes.iter().any(|&b| b != 0) {
            return bytes;
        }
    }
}

/// A random id as hex text (`N` bytes, `2N` digits).
pub fn hex_id<const N: usize>() -> String {
    super::hex::encode(&bytes::<N>())
}

/// xorshift64*: plenty for spreading retries, without another dependency. Not for ids
/// or anything secret.
pub struct XorShift(u64);

impl XorShift {
    /// A generator with a fixed seed (tests); the state must not be zero, so the low
    /// bit is set.
    pub fn seeded(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A generator seeded from the kernel's generator.
    pub fn random() -> Self {
        Self::seeded(u64::from_ne_bytes(bytes()))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_non_zero() {
        let a: [u8; 16] = bytes();
        let b: [u8; 16] = bytes();
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0));
        assert_eq!(hex_id::<8>().len(), 16);
    }

    #[test]
    fn generators_differ_unless_seeded_alike() {
        assert_ne!(XorShift::random().next_u64(), XorShift::random().next_u64());
        assert_eq!(
            XorShift::seeded(7).next_u64(),
            XorShift::seeded(7).next_u64()
        );
    }
}
