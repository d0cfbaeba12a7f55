//! The connectors file (`closer serve --connectors FILE`), JSON:
//!
//! ```json
//! {"hubspot": [{"tenant": "applinks", "token_env": "HUBSPOT_TOKEN",
//!               "requests_per_10s": 100}]}
//! ```
//!
//! Per HubSpot account: `tenant`, the private app's token from `token_env` (an environment
//! variable's name) or `token_file` (a file holding only the token) — never the token itself,
//! which is refused —, `base_url` (HubSpot's public API by default), `requests_per_10s`
//! (100), `request_timeout_secs` (15) and `attempt_timeout_secs` (60: one event's writes, 429
//! waits included). Unknown fields are refused, naming them.

use std::path::Path;

use serde::Deserialize;

/// HubSpot's public API.
pub const HUBSPOT_API: &str = "https://api.hubapi.com";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--connectors {path}: {message}")]
    File { path: String, message: String },
    #[error("connectors: {0}")]
    Invalid(String),
}

/// A private app's token; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(redacted)")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connectors {
    #[serde(default)]
    pub hubspot: Vec<HubSpotConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotConfig {
    pub tenant: String,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_budget")]
    pub requests_per_10s: u32,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    #[serde(default = "default_attempt_timeout")]
    pub attempt_timeout_secs: u64,
    /// Read from `token_env` or `token_file` by [`load`].
    #[serde(skip)]
    pub token: Option<Token>,
}

fn default_base_url() -> String {
    HUBSPOT_API.into()
}
fn default_budget() -> u32 {
    100
}
fn default_request_timeout() -> u64 {
    15
}
fn default_attempt_timeout() -> u64 {
    60
}

impl HubSpotConfig {
    /// The endpoint row's id and the consumer's name in `closer sync status`.
    pub fn id(&self) -> String {
        format!("hubspot-{}", self.tenant)
    }
}

/// Reads and checks the file, and reads every token.
pub fn load(path: &Path) -> Result<Connectors, ConfigError> {
    let fail = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut c = parse(&text).map_err(|e| match e {
        ConfigError::Invalid(m) => fail(m),
        other => other,
    })?;
    for (i, h) in c.hubspot.iter_mut().enumerate() {
        h.token = Some(read_token(i, h).map_err(fail)?);
    }
    Ok(c)
}

/// Parses and checks the file's text (tokens are not read).
pub fn parse(text: &str) -> Result<Connectors, ConfigError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    if let Some(list) = value.get("hubspot").and_then(|v| v.as_array()) {
        for (i, h) in list.iter().enumerate() {
            if h.get("token").is_some() {
                return Err(ConfigError::Invalid(format!(
                    "hubspot[{i}].token: never put the token in this file; name an environment \
                     variable (token_env) or a secret file (token_file)"
                )));
            }
        }
    }
    let c: Connectors =
        serde_json::from_value(value).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let mut tenants = std::collections::HashSet::new();
    for (i, h) in c.hubspot.iter().enumerate() {
        let field = |f: &str| format!("hubspot[{i}].{f}");
        if h.tenant.is_empty() || !tenants.insert(h.tenant.clone()) {
            return Err(ConfigError::Invalid(format!(
                "{}: empty or named twice",
                field("tenant")
            )));
        }
        if h.token_env.is_some() == h.token_file.is_some() {
            return Err(ConfigError::Invalid(format!(
                "{}: give exactly one of token_env and token_file",
                field("token_env")
            )));
        }
        let url = url::Url::parse(&h.base_url)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", field("base_url"))))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(ConfigError::Invalid(format!(
                "{}: http(s) URL expected",
                field("base_url")
            )));
        }
        if h.requests_per_10s == 0 || h.request_timeout_secs == 0 || h.attempt_timeout_secs == 0 {
            return Err(ConfigError::Invalid(format!(
                "{}: requests_per_10s, request_timeout_secs and attempt_timeout_secs must be above 0",
                field("requests_per_10s")
            )));
        }
    }
    Ok(c)
}

fn read_token(i: usize, h: &HubSpotConfig) -> Result<Token, String> {
    let token = match (&h.token_env, &h.token_file) {
        (Some(var), _) => std::env::var(var).map_err(|_| {
            format!("hubspot[{i}].token_env: environment variable {var} is not set")
        })?,
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| format!("hubspot[{i}].token_file {}: {e}", file.display()))?,
        (None, None) => unreachable!("checked by parse"),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(format!("hubspot[{i}]: the token is empty"));
    }
    Ok(Token(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_names_where_the_token_is_and_never_holds_it() {
        let c = parse(r#"{"hubspot":[{"tenant":"a","token_env":"X","requests_per_10s":190}]}"#)
            .unwrap();
        assert_eq!(c.hubspot[0].base_url, HUBSPOT_API);
        assert_eq!(c.hubspot[0].requests_per_10s, 190);
        assert_eq!(c.hubspot[0].id(), "hubspot-a");
        let e = parse(r#"{"hubspot":[{"tenant":"a","token":"pat-secret"}]}"#).unwrap_err();
        assert!(e.to_string().contains("hubspot[0].token"), "{e}");
        assert!(!e.to_string().contains("pat-secret"), "{e}");
        let e = parse(r#"{"hubspot":[{"tenant":"a"}]}"#).unwrap_err();
        assert!(e.to_string().contains("token_env"), "{e}");
        let e = parse(r#"{"hubspot":[{"tenant":"a","token_env":"X","colour":1}]}"#).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn a_token_file_is_read_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "pat-na1-xyz\n").unwrap();
        let cfg = dir.path().join("c.json");
        std::fs::write(
            &cfg,
            format!(r#"{{"hubspot":[{{"tenant":"a","token_file":{:?}}}]}}"#, f),
        )
        .unwrap();
        let c = load(&cfg).unwrap();
        let t = c.hubspot[0].token.as_ref().unwrap();
        assert_eq!(t.expose(), "pat-na1-xyz");
        assert!(!format!("{c:?}").contains("pat-na1"));
    }
}
