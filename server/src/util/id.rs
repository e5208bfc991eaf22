//! Identifier generation.
//!
//! Document ids are 20 characters of lower-case Crockford base32: 10 for the creation time in
//! milliseconds, 10 random. Ids sort by creation time (good B-tree locality, and the default
//! sort order of a query is creation order) and two ids made in the same millisecond still
//! differ with overwhelming probability (50 random bits).

use rand::RngExt;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new time-ordered, random document id.
pub fn new_id() -> String {
    let millis = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
    )
    .unwrap_or(u64::MAX);
    let random: u64 = rand::rng().random();
    let mut out = String::with_capacity(20);
    push_base32(&mut out, millis, 10);
    push_base32(&mut out, random, 10);
    out
}

fn push_base32(out: &mut String, value: u64, digits: u32) {
    for i in (0..digits).rev() {
        let idx = ((value >> (i * 5)) & 31) as usize;
        out.push(char::from(ALPHABET[idx]));
    }
}

/// `n` random bytes encoded as URL-safe base64 without padding (tokens, keys).
pub fn random_token(n: usize) -> String {
    use base64::Engine;
    let mut bytes = vec![0u8; n];
    rand::rng().fill(&mut bytes[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_twenty_chars_and_time_ordered() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        assert_eq!(a.len(), 20);
        assert!(a < b, "{a} should sort before {b}");
        assert!(a.bytes().all(|c| ALPHABET.contains(&c)));
    }

    #[test]
    fn random_tokens_differ() {
        assert_ne!(random_token(32), random_token(32));
        assert_eq!(random_token(32).len(), 43);
    }
}
