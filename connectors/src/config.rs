//! The connectors file (`closer serve --connectors FILE`), JSON:
//!
//! ```json
//! {"hubspot": [{"tenant": "applinks", "token_env": "HUBSPOT_TOKEN",
//!               "requests_per_10s": 100}],
//!  "salesforce": [{"tenant": "applinks", "base_url": "https://acme.my.salesforce.com",
//!                  "client_id_env": "SF_CLIENT_ID", "client_secret_env": "SF_CLIENT_SECRET"}]}
//! ```
//!
//! Per HubSpot account: `tenant`, the private app's token from `token_env` (an environment
//! variable's name) or `token_file` (a file holding only the token) — never the token itself,
//! which is refused —, `base_url` (HubSpot's public API by default), `requests_per_10s`
//! (100), `request_timeout_secs` (15) and `attempt_timeout_secs` (60: one event's writes, 429
//! waits included). Per Salesforce org: `tenant`, `base_url` (the org's My Domain, required),
//! the connected app's consumer key and secret, each from `client_id_env`/`client_id_file` and
//! `client_secret_env`/`client_secret_file` (never in the file), `api_version` ("v62.0"),
//! `pause_at_share` (0.9 of the org's daily API requests), `pause_secs` (3600) and the same
//! timeouts. Per Marketo instance: `tenant`, `base_url` (the REST endpoint, required), the
//! API-only user's client id and secret likewise, `calls_per_20s` (100), `concurrent_calls`
//! (10) and the same timeouts. Unknown fields are refused, naming them.

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
    pub fn new(value: &str) -> Self {
        Token(value.to_string())
    }

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
    #[serde(default)]
    pub salesforce: Vec<SalesforceConfig>,
    #[serde(default)]
    pub marketo: Vec<MarketoConfig>,
}

/// One Marketo instance, written through a LaunchPoint API-only user's client credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketoConfig {
    pub tenant: String,
    /// The instance's REST endpoint (`https://<munchkin-id>.mktorest.com`): the identity
    /// service under `/identity`, the REST API under `/rest`.
    pub base_url: String,
    #[serde(default)]
    pub client_id_env: Option<String>,
    #[serde(default)]
    pub client_id_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<std::path::PathBuf>,
    /// Calls in any rolling 20 s (Marketo's limit: 100).
    #[serde(default = "default_marketo_calls")]
    pub calls_per_20s: u32,
    /// Calls in flight at once (Marketo's limit: 10).
    #[serde(default = "default_marketo_concurrent")]
    pub concurrent_calls: u32,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    #[serde(default = "default_attempt_timeout")]
    pub attempt_timeout_secs: u64,
    #[serde(skip)]
    pub client_id: Option<Token>,
    #[serde(skip)]
    pub client_secret: Option<Token>,
}

impl MarketoConfig {
    /// The endpoint row's id and the consumer's name in `closer sync status`.
    pub fn id(&self) -> String {
        format!("marketo-{}", self.tenant)
    }
}

fn default_marketo_calls() -> u32 {
    100
}
fn default_marketo_concurrent() -> u32 {
    10
}

/// One Salesforce org, written through a connected app's client-credentials flow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    pub tenant: String,
    /// The org's My Domain (`https://<name>.my.salesforce.com`): token and data calls.
    pub base_url: String,
    #[serde(default)]
    pub client_id_env: Option<String>,
    #[serde(default)]
    pub client_id_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<std::path::PathBuf>,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The share of the org's daily API requests (`Sforce-Limit-Info`) at which writes pause.
    #[serde(default = "default_pause_share")]
    pub pause_at_share: f64,
    /// How long writes pause once the share is reached.
    #[serde(default = "default_pause_secs")]
    pub pause_secs: u64,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    #[serde(default = "default_attempt_timeout")]
    pub attempt_timeout_secs: u64,
    /// Read by [`load`].
    #[serde(skip)]
    pub client_id: Option<Token>,
    #[serde(skip)]
    pub client_secret: Option<Token>,
}

impl SalesforceConfig {
    /// The endpoint row's id and the consumer's name in `closer sync status`.
    pub fn id(&self) -> String {
        format!("salesforce-{}", self.tenant)
    }
}

fn default_api_version() -> String {
    "v62.0".into()
}
fn default_pause_share() -> f64 {
    0.9
}
fn default_pause_secs() -> u64 {
    3600
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
        let at = format!("hubspot[{i}]");
        h.token = Some(read_secret(&at, "token", &h.token_env, &h.token_file).map_err(fail)?);
    }
    for (i, s) in c.salesforce.iter_mut().enumerate() {
        let at = format!("salesforce[{i}]");
        s.client_id =
            Some(read_secret(&at, "client_id", &s.client_id_env, &s.client_id_file).map_err(fail)?);
        s.client_secret = Some(
            read_secret(
                &at,
                "client_secret",
                &s.client_secret_env,
                &s.client_secret_file,
            )
            .map_err(fail)?,
        );
    }
    for (i, m) in c.marketo.iter_mut().enumerate() {
        let at = format!("marketo[{i}]");
        m.client_id =
            Some(read_secret(&at, "client_id", &m.client_id_env, &m.client_id_file).map_err(fail)?);
        m.client_secret = Some(
            read_secret(
                &at,
                "client_secret",
                &m.client_secret_env,
                &m.client_secret_file,
            )
            .map_err(fail)?,
        );
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
    for kind in ["salesforce", "marketo"] {
        let Some(list) = value.get(kind).and_then(|v| v.as_array()) else {
            continue;
        };
        for (i, s) in list.iter().enumerate() {
            for secret in ["client_id", "client_secret", "access_token", "token"] {
                if s.get(secret).is_some() {
                    return Err(ConfigError::Invalid(format!(
                        "{kind}[{i}].{secret}: never put credentials in this file; name \
                         an environment variable ({secret}_env) or a secret file ({secret}_file)"
                    )));
                }
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
        base_url(&h.base_url, &field("base_url"))?;
        if h.requests_per_10s == 0 || h.request_timeout_secs == 0 || h.attempt_timeout_secs == 0 {
            return Err(ConfigError::Invalid(format!(
                "{}: requests_per_10s, request_timeout_secs and attempt_timeout_secs must be above 0",
                field("requests_per_10s")
            )));
        }
    }
    let mut tenants = std::collections::HashSet::new();
    for (i, s) in c.salesforce.iter().enumerate() {
        let field = |f: &str| format!("salesforce[{i}].{f}");
        check_org(
            &field,
            &s.tenant,
            &mut tenants,
            [
                ("client_id", &s.client_id_env, &s.client_id_file),
                ("client_secret", &s.client_secret_env, &s.client_secret_file),
            ],
            &s.base_url,
        )?;
        let version = s.api_version.strip_prefix('v').unwrap_or("");
        if version.split('.').count() != 2
            || !version
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(ConfigError::Invalid(format!(
                "{}: like \"v62.0\"",
                field("api_version")
            )));
        }
        if !(s.pause_at_share > 0.0 && s.pause_at_share <= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "{}: a share above 0 and at most 1",
                field("pause_at_share")
            )));
        }
        if s.request_timeout_secs == 0 || s.attempt_timeout_secs == 0 || s.pause_secs == 0 {
            return Err(ConfigError::Invalid(format!(
                "{}: request_timeout_secs, attempt_timeout_secs and pause_secs must be above 0",
                field("request_timeout_secs")
            )));
        }
    }
    let mut tenants = std::collections::HashSet::new();
    for (i, m) in c.marketo.iter().enumerate() {
        let field = |f: &str| format!("marketo[{i}].{f}");
        check_org(
            &field,
            &m.tenant,
            &mut tenants,
            [
                ("client_id", &m.client_id_env, &m.client_id_file),
                ("client_secret", &m.client_secret_env, &m.client_secret_file),
            ],
            &m.base_url,
        )?;
        if m.calls_per_20s == 0
            || m.concurrent_calls == 0
            || m.request_timeout_secs == 0
            || m.attempt_timeout_secs == 0
        {
            return Err(ConfigError::Invalid(format!(
                "{}: calls_per_20s, concurrent_calls and the timeouts must be above 0",
                field("calls_per_20s")
            )));
        }
    }
    Ok(c)
}

/// A credential's two possible sources: (name, `<name>_env`, `<name>_file`).
type Sources<'a> = (&'a str, &'a Option<String>, &'a Option<std::path::PathBuf>);

/// An org's tenant named once in its list, exactly one source per credential, an http(s) base.
fn check_org(
    field: &dyn Fn(&str) -> String,
    tenant: &str,
    tenants: &mut std::collections::HashSet<String>,
    credentials: [Sources<'_>; 2],
    base: &str,
) -> Result<(), ConfigError> {
    if tenant.is_empty() || !tenants.insert(tenant.to_string()) {
        return Err(ConfigError::Invalid(format!(
            "{}: empty or named twice",
            field("tenant")
        )));
    }
    for (name, env, file) in credentials {
        if env.is_some() == file.is_some() {
            return Err(ConfigError::Invalid(format!(
                "{}: give exactly one of {name}_env and {name}_file",
                field(&format!("{name}_env"))
            )));
        }
    }
    base_url(base, &field("base_url"))
}

fn base_url(text: &str, field: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(text).map_err(|e| ConfigError::Invalid(format!("{field}: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(ConfigError::Invalid(format!(
            "{field}: http(s) URL expected"
        )));
    }
    Ok(())
}

/// A credential from its environment variable or its file (`at`.`name`: where, for errors).
fn read_secret(
    at: &str,
    name: &str,
    env: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> Result<Token, String> {
    let at = format!("{at}.{name}");
    let value = match (env, file) {
        (Some(var), _) => std::env::var(var)
            .map_err(|_| format!("{at}_env: environment variable {var} is not set"))?,
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| format!("{at}_file {}: {e}", file.display()))?,
        (None, None) => unreachable!("checked by parse"),
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(format!("{at}: empty"));
    }
    Ok(Token(value))
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

    #[test]
    fn a_salesforce_org_names_where_its_credentials_are() {
        let c = parse(
            r#"{"salesforce":[{"tenant":"a","base_url":"https://a.my.salesforce.com",
                "client_id_env":"I","client_secret_file":"/run/secret"}]}"#,
        )
        .unwrap();
        let s = &c.salesforce[0];
        assert_eq!(
            (s.id().as_str(), s.api_version.as_str()),
            ("salesforce-a", "v62.0")
        );
        assert_eq!((s.pause_at_share, s.pause_secs), (0.9, 3600));
        let e = parse(
            r#"{"salesforce":[{"tenant":"a","base_url":"https://x","client_secret":"s3cret"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("salesforce[0].client_secret"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e =
            parse(r#"{"salesforce":[{"tenant":"a","base_url":"https://x","client_id_env":"I"}]}"#)
                .unwrap_err();
        assert!(e.to_string().contains("client_secret_env"), "{e}");
        let e = parse(
            r#"{"salesforce":[{"tenant":"a","base_url":"https://x","client_id_env":"I",
                "client_secret_env":"S","pause_at_share":1.5}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("pause_at_share"), "{e}");
    }

    #[test]
    fn a_marketo_instance_names_where_its_credentials_are() {
        let c = parse(
            r#"{"marketo":[{"tenant":"a","base_url":"https://123-abc-456.mktorest.com",
                "client_id_env":"I","client_secret_env":"S"}]}"#,
        )
        .unwrap();
        let m = &c.marketo[0];
        assert_eq!(
            (m.id().as_str(), m.calls_per_20s, m.concurrent_calls),
            ("marketo-a", 100, 10)
        );
        let e = parse(
            r#"{"marketo":[{"tenant":"a","base_url":"https://x","client_secret":"s3cret"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("marketo[0].client_secret"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
