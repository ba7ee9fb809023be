//! Hashing without randomness: a seeded 64-bit id hash for the indexes, and the 128-bit record
//! hash behind the state hash. Both are folded multiplies (the wyhash construction): a few
//! cycles per word, identical on every machine, with no per-process random seed.

const K0: u64 = 0x9e37_79b9_7f4a_7c15;
const K1: u64 = 0xbf58_476d_1ce4_e5b9;
const K2: u64 = 0x94d0_49bb_1331_11eb;
const K3: u64 = 0xd6e8_feb8_6659_fd93;

#[inline(always)]
pub(crate) fn fold_mul(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// The index hash of an id: 64 well-mixed bits.
#[inline(always)]
pub(crate) fn id_hash(id: u128, seed: u64) -> u64 {
    let low = id as u64;
    let high = (id >> 64) as u64;
    let first = fold_mul(low ^ seed ^ K0, high ^ K1);
    fold_mul(first ^ K2, low.rotate_left(29) ^ high ^ seed ^ K3)
}

/// A 128-bit hash of a record's words: four independent lanes, so the multiplies of a
/// 16-word record overlap instead of waiting on each other.
#[inline]
pub(crate) fn hash_words(words: &[u64], seed: u64) -> u128 {
    const LANE_KEYS: [u64; 4] = [K0, K1, K2, K3];
    let mut lanes = [seed ^ K0, seed.rotate_left(16) ^ K1, seed.rotate_left(32) ^ K2, seed.rotate_left(48) ^ K3];
    let mut lane = 0;
    for pair in words.chunks(2) {
        let x = pair[0];
        let y = if pair.len() == 2 { pair[1] } else { K3 };
        lanes[lane] = fold_mul(x ^ lanes[lane], y ^ LANE_KEYS[lane]);
        lane = (lane + 1) % 4;
    }
    let count = words.len() as u64;
    let low = fold_mul(lanes[0] ^ count ^ K1, lanes[1] ^ K2) ^ fold_mul(lanes[2] ^ K3, lanes[3] ^ K0);
    let high = fold_mul(lanes[1] ^ count ^ K3, lanes[2] ^ K0) ^ fold_mul(lanes[3] ^ K1, lanes[0] ^ K2);
    (u128::from(high) << 64) | u128::from(low)
}

/// `hash_words` of exactly sixteen words, unrolled: four lanes of two steps each.
#[inline(always)]
pub(crate) fn hash_record(words: &[u64; 16], seed: u64) -> u128 {
    let mut a = seed ^ K0;
    let mut b = seed.rotate_left(16) ^ K1;
    let mut c = seed.rotate_left(32) ^ K2;
    let mut d = seed.rotate_left(48) ^ K3;
    for step in 0..2 {
        let w = &words[step * 8..step * 8 + 8];
        a = fold_mul(w[0] ^ a, w[1] ^ K0);
        b = fold_mul(w[2] ^ b, w[3] ^ K1);
        c = fold_mul(w[4] ^ c, w[5] ^ K2);
        d = fold_mul(w[6] ^ d, w[7] ^ K3);
    }
    let low = fold_mul(a ^ 16 ^ K1, b ^ K2) ^ fold_mul(c ^ K3, d ^ K0);
    let high = fold_mul(b ^ 16 ^ K3, c ^ K0) ^ fold_mul(d ^ K1, a ^ K2);
    (u128::from(high) << 64) | u128::from(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_hash_depends_on_both_halves_and_the_seed() {
        let base = id_hash(1, 7);
        assert_ne!(base, id_hash(1 << 64 | 1, 7));
        assert_ne!(base, id_hash(2, 7));
        assert_ne!(base, id_hash(1, 8));
        assert_eq!(base, id_hash(1, 7));
    }

    #[test]
    fn hash_words_sees_every_word_and_the_length() {
        let words = [3u64; 16];
        let base = hash_words(&words, 1);
        for index in 0..16 {
            let mut changed = words;
            changed[index] ^= 1;
            assert_ne!(base, hash_words(&changed, 1), "word {index} not hashed");
        }
        assert_ne!(hash_words(&words[..15], 1), hash_words(&words[..14], 1));
        assert_ne!(base, hash_words(&words, 2));
        let record = hash_record(&words, 1);
        for index in 0..16 {
            let mut changed = words;
            changed[index] ^= 1 << 40;
            assert_ne!(record, hash_record(&changed, 1), "record word {index} not hashed");
        }
    }
}
