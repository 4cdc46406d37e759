//! Identifiers shared by every layer: random tokens (SIP tags, Call-IDs, recording and WHEP
//! session ids) and the rule for ids that users choose (callId, stream names, instances).
//! A neutral module so that record/, webrtc/ and siprec/ need not import the SIP core.

use rand::Rng;

/// A random token of `len` characters from `[a-z0-9]` (RFC 3261 asks for at least 32 bits
/// of randomness in tags and Call-IDs; 10 characters carry 51).
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// An id a user may choose: 1–128 of `A-Z a-z 0-9 _ . -` (safe in file names and URLs).
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_length_and_alphabet() {
        let t = random_token(20);
        assert_eq!(t.len(), 20);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_ne!(random_token(20), t);
    }

    #[test]
    fn ids_are_bounded_and_path_safe() {
        assert!(is_valid_id("call-1_a.b"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("../x"));
        assert!(!is_valid_id(&"a".repeat(129)));
    }
}
