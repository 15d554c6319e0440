//! PSON decoders on arbitrary bytes: no panic, the owned and borrowed decoders agree, and
//! whatever decodes re-encodes to bytes that decode to the same encoding; the trusted decode
//! (no container walk) reads checked bytes the same and any bytes without panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinlake_sdk::pson::{Limits, Value, ValueRef};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_depth: 16,
        max_size: 1 << 16,
    };
    let owned = Value::decode_with(data, &limits);
    let borrowed = ValueRef::decode_with(data, &limits);
    assert_eq!(owned.is_ok(), borrowed.is_ok(), "decoders disagree");
    if let (Ok(v), Ok(r)) = (owned, borrowed) {
        let bytes = v.to_bytes();
        assert_eq!(bytes.len(), v.encoded_len());
        assert_eq!(Value::from_ref(r).to_bytes(), bytes);
        let again = Value::decode_with(&bytes, &limits).expect("re-encoded value decodes");
        assert_eq!(again.to_bytes(), bytes);
        // What decoded reads the same without the container walk.
        let trusted = ValueRef::decode_trusted(data).expect("trusted decode of checked bytes");
        assert_eq!(Value::from_ref(trusted).to_bytes(), bytes);
    }
    // On bytes nobody checked, the trusted decode does not panic either.
    if let Ok(r) = ValueRef::decode_trusted(data) {
        let _ = Value::from_ref(r);
    }
});
