//! Standard Webhooks signing: secrets (`whsec_` + base64 of 32 random bytes) and the
//! `webhook-signature` value `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`, with
//! the previous secret's signature beside it while a rotation is in its grace period.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use closer_store::{Secret, WebhookEndpoint};
use hmac::{Hmac, Mac};
use rand::RngCore;

use crate::error::{Error, Result};

const PREFIX: &str = "whsec_";

/// A new random secret.
pub fn generate() -> Secret {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    Secret::new(format!("{PREFIX}{}", STANDARD.encode(key)))
}

/// The HMAC key: the base64 after `whsec_`.
pub fn key_bytes(secret: &Secret) -> Result<Vec<u8>> {
    let s = secret.expose();
    let b64 = s.strip_prefix(PREFIX).unwrap_or(s);
    STANDARD
        .decode(b64)
        .map_err(|_| Error::Internal("a stored webhook secret is not base64".into()))
}

/// One signature, `v1,<base64>`.
pub fn sign(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    let key = key_bytes(secret)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key)
        .map_err(|e| Error::Internal(format!("hmac key: {e}")))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The `webhook-signature` header of an endpoint at `now_ms`: the current secret's signature,
/// then (space-separated) the previous secret's while it still signs.
pub fn signature_header(
    endpoint: &WebhookEndpoint,
    id: &str,
    timestamp: i64,
    body: &[u8],
    now_ms: i64,
) -> Result<String> {
    let mut out = sign(&endpoint.secret, id, timestamp, body)?;
    if let Some((old, until)) = &endpoint.previous {
        if now_ms < *until {
            out.push(' ');
            out.push_str(&sign(old, id, timestamp, body)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_test_vector() {
        // The published vector of the Standard Webhooks specification (and its reference
        // libraries): a wrong delimiter, key decoding or alphabet changes the result.
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let sig = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let other = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232315}"#,
        )
        .unwrap();
        assert_ne!(other, sig);
    }

    #[test]
    fn secrets_are_32_random_bytes_and_debug_hides_them() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(key_bytes(&a).unwrap().len(), 32);
        assert!(!format!("{a:?}").contains(&a.expose()[6..]));
    }

    #[test]
    fn during_rotation_both_secrets_sign_until_the_grace_period_ends() {
        let mut e = WebhookEndpoint {
            id: "wh_1".into(),
            tenant: "t".into(),
            url: "https://example.invalid/".into(),
            kinds: vec![],
            description: String::new(),
            secret: generate(),
            previous: None,
            created_ms: 0,
            disabled: None,
            scan_cursor: 0,
            pending: 0,
            oldest_pending: None,
            dead: 0,
        };
        let old = generate();
        e.previous = Some((old.clone(), 1_000));
        let h = signature_header(&e, "evt_1", 5, b"{}", 999).unwrap();
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&e.secret, "evt_1", 5, b"{}").unwrap());
        assert_eq!(parts[1], sign(&old, "evt_1", 5, b"{}").unwrap());
        let after = signature_header(&e, "evt_1", 5, b"{}", 1_000).unwrap();
        assert_eq!(after, parts[0]);
    }
}
