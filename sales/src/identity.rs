//! Verified visitor identity, as chat widgets do it: the team's own server signs the visitor's
//! e-mail with a tenant secret — an HMAC-SHA256 "user hash" (hex) of the e-mail, or an HS256 JWT
//! (`aud` = the tenant, `exp` at most an hour ahead, the e-mail in `email` or `sub`) — and the
//! widget passes it on. Only a verified e-mail's domain names the account owner to the visitor or
//! counts the account's facts in the score; typed text never upgrades a conversation.

use closer_kb::{IdentityMode, TenantProfile};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::error::{Error, Result};
pub use crate::visitor::Level;
use crate::visitor::Visitor;

/// What the frontend sent to prove who the visitor is.
#[derive(Debug, Clone, Default)]
pub struct Proof<'a> {
    /// Hex HMAC-SHA256 of the visitor's e-mail (as sent) with a tenant secret.
    pub user_hash: Option<&'a str>,
    /// An HS256 JWT signed with a tenant secret.
    pub token: Option<&'a str>,
}

/// The longest lifetime a signed token may have left.
const MAX_TOKEN_SECS: i64 = 3600;
/// Clock skew allowed between the team's server and this one.
const LEEWAY_SECS: i64 = 60;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    email: Option<String>,
}

fn hmac_matches(secret: &str, message: &str, hex_mac: &str) -> bool {
    let Ok(want) = hex::decode(hex_mac.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(message.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&want).is_ok()
}

/// The e-mail a token verifies, if it is a valid HS256 token of `tenant` for one of `secrets`.
fn token_email(token: &str, tenant: &str, secrets: &[&str], now: i64) -> Option<String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&[tenant]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    v.leeway = LEEWAY_SECS as u64;
    secrets.iter().find_map(|s| {
        let data =
            jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(s.as_bytes()), &v)
                .ok()?;
        let c = data.claims;
        if c.exp > now + MAX_TOKEN_SECS + LEEWAY_SECS {
            return None;
        }
        c.email.or(Some(c.sub)).filter(|e| e.contains('@'))
    })
}

/// Checks the visitor's proof against the tenant's secrets and records the level on `visitor`
/// (with identity `off` nothing changes). Under `required`, a visitor who is not verified is
/// refused, naming the field.
pub fn verify(
    profile: &TenantProfile,
    visitor: &mut Visitor,
    proof: &Proof<'_>,
    now: i64,
) -> Result<Level> {
    let claimed = visitor.email.is_some() || visitor.domain.is_some();
    if profile.identity == IdentityMode::Off {
        visitor.identity = None;
        return Ok(if claimed {
            Level::Claimed
        } else {
            Level::Anonymous
        });
    }
    let secrets: Vec<&str> = profile
        .identity_secrets
        .iter()
        .map(|s| s.0.as_str())
        .collect();
    let by_hash = match (proof.user_hash, visitor.email.as_deref()) {
        (Some(h), Some(e)) if secrets.iter().any(|s| hmac_matches(s, e, h)) => Some(e.to_string()),
        _ => None,
    };
    let email = by_hash.or_else(|| {
        proof
            .token
            .and_then(|t| token_email(t, &profile.id, &secrets, now))
    });
    let level = match &email {
        Some(_) => Level::Verified,
        None if claimed || proof.token.is_some() => Level::Claimed,
        None => Level::Anonymous,
    };
    if profile.identity == IdentityMode::Required && level != Level::Verified {
        return Err(Error::Denied {
            field: "visitor".into(),
            message: format!(
                "tenant {:?} requires a verified visitor: a user_hash of the e-mail or an identity_token signed with its secret",
                profile.id
            ),
        });
    }
    if let Some(e) = &email {
        // A verified e-mail is the visitor's e-mail (a token may carry it alone).
        visitor.email = Some(e.clone());
    }
    visitor.identity = Some(crate::visitor::Identity {
        level,
        verified_domain: email
            .as_deref()
            .and_then(|e| e.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase()),
    });
    Ok(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(mode: IdentityMode) -> TenantProfile {
        TenantProfile {
            id: "applinks".into(),
            company: "Applinks".into(),
            names: vec![],
            allowed_origins: vec![],
            identity: mode,
            identity_secrets: vec![
                closer_kb::Secret("new-secret-0123456789".into()),
                closer_kb::Secret("old-secret-0123456789".into()),
            ],
            count_claimed_accounts: false,
        }
    }

    fn hmac_hex(secret: &str, msg: &str) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        m.update(msg.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert!(hmac_matches(
            "Jefe",
            "what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        ));
        assert!(!hmac_matches(
            "Jefe",
            "what do ya want for nothing!",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        ));
    }

    #[test]
    fn a_user_hash_verifies_with_either_secret_and_only_for_its_email() {
        let p = profile(IdentityMode::Optional);
        for secret in ["new-secret-0123456789", "old-secret-0123456789"] {
            let mut v = Visitor::new(None, Some("kim@acme.com"), None, None);
            let h = hmac_hex(secret, "kim@acme.com");
            let proof = Proof {
                user_hash: Some(&h),
                token: None,
            };
            assert_eq!(verify(&p, &mut v, &proof, 0).unwrap(), Level::Verified);
            assert_eq!(v.trusted_domain(), Some("acme.com"));
        }
        let other = hmac_hex("new-secret-0123456789", "bob@acme.com");
        let wrong_secret = hmac_hex("not-the-secret-0123", "kim@acme.com");
        for h in [other.as_str(), wrong_secret.as_str(), "zz"] {
            let mut v = Visitor::new(None, Some("kim@acme.com"), None, None);
            let proof = Proof {
                user_hash: Some(h),
                token: None,
            };
            assert_eq!(verify(&p, &mut v, &proof, 0).unwrap(), Level::Claimed);
            assert_eq!(v.trusted_domain(), None, "a claimed domain is not trusted");
        }
        let mut v = Visitor::default();
        assert_eq!(
            verify(&p, &mut v, &Proof::default(), 0).unwrap(),
            Level::Anonymous
        );
        let e = verify(
            &profile(IdentityMode::Required),
            &mut v,
            &Proof::default(),
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("visitor:"), "{e}");
    }

    #[test]
    fn identity_off_keeps_the_claimed_domain_trusted() {
        let mut v = Visitor::new(Some("acme.com"), None, None, None);
        let level = verify(&profile(IdentityMode::Off), &mut v, &Proof::default(), 0).unwrap();
        assert_eq!(level, Level::Claimed);
        assert_eq!(v.trusted_domain(), Some("acme.com"));
    }
}
