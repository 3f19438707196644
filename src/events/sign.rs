//! Standard Webhooks signatures (https://www.standardwebhooks.com/): `v1,` + base64 of
//! HMAC-SHA256 over `<webhook-id>.<webhook-timestamp>.<body>`, keyed with the bytes of the
//! `whsec_` secret. Written here (a few lines on `hmac`) so the tests can check them with the
//! standard's own library instead of ours.

use base64::Engine;
use hmac::Mac;

const PREFIX: &str = "whsec_";

/// A new secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("{PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// One `v1,<signature>` entry; `None` when the secret is not a `whsec_` secret.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix(PREFIX)?).ok()?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Some(format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())))
}

/// The `webhook-signature` header: one entry per secret, space-separated (a rotation's overlap).
pub fn header(secrets: &[&str], id: &str, timestamp: i64, body: &str) -> String {
    secrets.iter().filter_map(|s| signature(s, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector of the standard's Rust library's own tests (standardwebhooks 1.0.1, `test_sign`).
    #[test]
    fn the_standards_example_signs_alike() {
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let body = r#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            signature(secret, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body).unwrap(),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn secrets_have_the_standard_form_and_two_sign_side_by_side() {
        let (a, b) = (new_secret(), new_secret());
        assert!(a.starts_with("whsec_") && a != b);
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(&a[6..]).unwrap().len(), 32);
        let both = header(&[&a, &b], "msg_1", 1, "{}");
        assert_eq!(both.split(' ').count(), 2);
        assert!(signature("not-a-secret", "m", 1, "").is_none());
    }
}
