//! The `esk-signature` header of webhook requests, after Stripe's scheme:
//! `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the projection's secret. The
//! timestamp is signed too, so a receiver that rejects old timestamps also rejects replays.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header's name.
pub(crate) const HEADER: &str = "esk-signature";

/// The header's value for `body` sent at `timestamp` (unix seconds).
pub(crate) fn header_value(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

/// HMAC-SHA256 of `"<timestamp>.<body>"`.
fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length (longer ones are hashed first): this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_the_hmac_of_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
        let value = header_value(b"key", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            value,
            "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
    }

    #[test]
    fn another_secret_body_or_time_gives_another_signature() {
        let base = header_value(b"secret-one-16byt", 10, b"body");
        assert_ne!(base, header_value(b"secret-two-16byt", 10, b"body"));
        assert_ne!(base, header_value(b"secret-one-16byt", 10, b"bodY"));
        assert_ne!(base, header_value(b"secret-one-16byt", 11, b"body"));
    }
}
