//! Secure random bytes, hex text (ids, generated credentials, LoRaWAN keys), and comparing
//! secrets in constant time.

/// Fills `b` from the system's secure random source.
pub fn random(b: &mut [u8]) {
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), b);
}

/// `bytes` secure random bytes as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    random(&mut b);
    hex(&b)
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes from hex digits (`:`, `-` and spaces ignored), big-endian as written; `None` if
/// a digit is not hex or one is left over.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|c| !b":- ".contains(c)).collect();
    if !digits.len().is_multiple_of(2) || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// Whether `a` and `b` are equal, in time that depends on their length only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
