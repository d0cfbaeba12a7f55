//! What a tenant knows, as records: facts, accounts, reps and the team's profile.

use serde::{Deserialize, Serialize};

use crate::time;

/// A fact the assistant may state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fact {
    pub id: String,
    pub kind: String,
    pub question: String,
    pub answer: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Intents this fact answers; retrieval for such an intent prefers it.
    #[serde(default)]
    pub intents: Vec<String>,
    /// First day (or RFC 3339 instant) the fact may be used; none = always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<String>,
    /// Last day (inclusive, or an RFC 3339 instant) the fact may be used; none = no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
}

impl Fact {
    /// All text of the fact that may back a generated claim.
    pub fn evidence_text(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.question,
            self.answer,
            self.tags.join(", ")
        )
    }

    /// Whether the fact may be used at `now` (Unix seconds).
    pub fn is_valid_at(&self, now: i64) -> bool {
        let from = self
            .valid_from
            .as_deref()
            .and_then(|s| time::parse(s, false));
        let until = self
            .valid_until
            .as_deref()
            .and_then(|s| time::parse(s, true));
        from.is_none_or(|f| now >= f) && until.is_none_or(|u| now < u)
    }
}

/// A company the team sells to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub domain: String,
    pub name: String,
    pub owner_rep_id: String,
    #[serde(default)]
    pub segment: String,
    #[serde(default)]
    pub employees: Option<u32>,
    #[serde(default)]
    pub country: String,
    /// A strategic target account.
    #[serde(default)]
    pub target: bool,
    #[serde(default)]
    pub industry: String,
    /// The account has an open opportunity in the CRM.
    #[serde(default)]
    pub open_opportunity: bool,
}

/// A human sales rep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rep {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub region: String,
    /// Languages spoken, separated by `;` (e.g. `en;de`).
    #[serde(default)]
    pub languages: String,
    /// IANA time zone, e.g. `Europe/London`.
    #[serde(default)]
    pub timezone: String,
    /// Working hours in that zone, e.g. `09:00-17:00`.
    #[serde(default)]
    pub working_hours: String,
    #[serde(default)]
    pub meeting_link: String,
}

/// The team's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantProfile {
    pub id: String,
    /// The company name the assistant speaks for.
    pub company: String,
    /// Product and brand names the assistant may say besides facts.
    #[serde(default)]
    pub names: Vec<String>,
    /// Web origins (`https://www.example.com`, scheme, host and port only) whose pages may call
    /// the visitor-facing RPCs from a browser (gRPC-Web, CORS). Empty: no browser origin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Verified visitor identity: `off` (a claimed e-mail or domain is trusted, as before),
    /// `optional` (only a verified one names the account owner or counts account facts) or
    /// `required` (a visitor who is not verified cannot start).
    #[serde(default, skip_serializing_if = "IdentityMode::is_off")]
    pub identity: IdentityMode,
    /// The secrets the team's server signs visitors with (user hash or HS256 token): one, or
    /// two while rotating. Never logged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_secrets: Vec<Secret>,
    /// Count account facts (target, segment, size…) of a claimed, unverified account in the
    /// score too (the reason says "claimed").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub count_claimed_accounts: bool,
}

/// How a tenant treats the identity its visitors claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMode {
    #[default]
    Off,
    Optional,
    Required,
}

impl IdentityMode {
    pub fn is_off(&self) -> bool {
        *self == IdentityMode::Off
    }
}

/// A secret string: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Checks one allowed origin: `http(s)://host[:port]`, nothing after it, lowercase host.
pub fn validate_origin(o: &str) -> std::result::Result<(), String> {
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(|| format!("{o:?} must start with https:// or http://"))?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if !host_ok || !port_ok {
        return Err(format!(
            "{o:?} is not an origin: scheme, lowercase host and optional port, no path or trailing slash"
        ));
    }
    Ok(())
}
