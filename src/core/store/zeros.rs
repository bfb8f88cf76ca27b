//! Whether a buffer is all zeros, at memory speed. A byte-by-byte scan with an early exit does
//! not vectorize: 5.9 ms per 8 MiB of zeros on this project's 2-CPU machine, against 0.11 ms
//! OR-ing 64-byte blocks (a scratch program timing both, release build). Zeros are common
//! input: mkfs and WRITE SAME write them, UNMAP leaves them, imported images have holes.

/// Whether every byte of `data` is zero.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    let whole = blocks.by_ref().all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0);
    whole && blocks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::is_zero;

    proptest! {
        /// The same answer as a byte-by-byte scan, for every length around the block size and
        /// a non-zero byte anywhere (or none).
        #[test]
        fn agrees_with_a_scan_byte_by_byte(len in 0usize..300, at in any::<prop::sample::Index>(), value in 0u8..=255) {
            let mut data = vec![0u8; len];
            if len > 0 {
                data[at.index(len)] = value;
            }
            prop_assert_eq!(is_zero(&data), data.iter().all(|&b| b == 0));
        }
    }
}
