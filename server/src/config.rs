//! Configuration: one struct, one flag and one environment variable per field.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Which answer generator `closer serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GeneratorKind {
    /// The pinned Qwen model.
    Real,
    /// Restates the cited facts at a set pace (load tests of everything else).
    Fake,
}

/// Whether calls need an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Keys unless the server listens on a loopback address only; there, keys for requests
    /// that came through a proxy (forwarding headers).
    Auto,
    /// Every call but health and reflection needs a key.
    Keys,
    /// No keys.
    Off,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of `closer serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address the gRPC server listens on.
    #[arg(long, env = "CLOSER_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,

    /// Folder holding tenants (written by `closer kb load`).
    #[arg(long, env = "CLOSER_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,

    /// PostgreSQL for the durable state (conversations, leads, events, meetings, keys), shared
    /// by several replicas: `postgresql://user:password@host:port/database` (TLS is not used:
    /// keep the database on a private network). Without it, SQLite under `--data-dir`.
    #[arg(long, env = "CLOSER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// NATS server for wake-ups between replicas (`nats://host:4222`): an event written on
    /// one replica wakes the streams of the others at once. Without it, replicas on one
    /// database poll it (every 200 ms); with it, every 2 s as a fallback.
    #[arg(long, env = "CLOSER_NATS_URL")]
    pub nats_url: Option<String>,

    /// Folder holding ready model files (written by `closer models pull`).
    #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
    pub model_dir: PathBuf,

    /// Longest visitor message accepted, in characters.
    #[arg(long, env = "CLOSER_MAX_MESSAGE_CHARS", default_value_t = 2000)]
    pub max_message_chars: usize,

    /// Most visitor turns in one conversation.
    #[arg(long, env = "CLOSER_MAX_TURNS", default_value_t = 200)]
    pub max_turns: u32,

    /// Sales events older than this many days are removed from the outbox (checked at start-up
    /// and hourly); a subscriber asking for removed events gets FAILED_PRECONDITION naming the
    /// cursor to read from. 0 keeps every event.
    #[arg(long, env = "CLOSER_EVENT_RETENTION_DAYS", default_value_t = 30)]
    pub event_retention_days: u32,

    /// The chat widget's bundle, served at `/widget.js` (`make widget` builds it here).
    #[arg(
        long,
        env = "CLOSER_WIDGET_JS",
        default_value = "web/widget/dist/widget.js"
    )]
    pub widget_js: PathBuf,

    /// Most tokens generated for one reply.
    #[arg(long, env = "CLOSER_MAX_NEW_TOKENS", default_value_t = 160)]
    pub max_new_tokens: usize,

    /// Replies being generated or waiting for the generator at once; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "CLOSER_MAX_PENDING_REPLIES", default_value_t = 64)]
    pub max_pending_replies: usize,

    /// Replies one tenant may have in progress or queued at once, so one team's flood cannot take
    /// every permit of `--max-pending-replies` from the others.
    #[arg(long, env = "CLOSER_TENANT_MAX_PENDING_REPLIES", default_value_t = 32)]
    pub tenant_max_pending_replies: usize,

    /// Replies generated at once. Their forward passes take turns on the one model (the
    /// least recently busy tenant first); one tenant holds at most half of these slots, and
    /// replies beyond them queue, the least recently served tenant first.
    #[arg(long, env = "CLOSER_GENERATOR_SLOTS", default_value_t = 4)]
    pub generator_slots: usize,

    /// `real` (the pinned Qwen model) or `fake`: a stand-in that restates the cited facts at
    /// `--fake-token-ms` per word after `--fake-prefill-ms`, for load tests of everything else.
    #[arg(long, env = "CLOSER_GENERATOR", value_enum, default_value_t = GeneratorKind::Real)]
    pub generator: GeneratorKind,

    /// The encoder intent classifiers read: `minilm` (all-MiniLM-L6-v2, also used for
    /// retrieval), `mpnet` (all-mpnet-base-v2: more accurate on CLINC150, about 8× the
    /// compute per message and 440 MB more memory; `closer models pull --intent-encoder mpnet`)
    /// or `minilm+mpnet` (both side by side: the most accurate, the cost of MPNet plus MiniLM).
    /// Changing it retrains every tenant's intent model once, at start-up.
    #[arg(long, env = "CLOSER_INTENT_ENCODER", default_value = "minilm")]
    pub intent_encoder: closer_models::source::IntentEncoder,

    /// The larger encoder the answerability judgement reads beside retrieval's: `auto` (MPNet
    /// where it is pulled; README's answer figures are with it; about 590 MiB more memory and one
    /// MPNet pass per question), `mpnet` (required: start-up fails without its files) or `off`
    /// (the MiniLM-only judgement: fewer questions answered).
    #[arg(long, env = "CLOSER_ANSWER_ENCODER", default_value = "auto")]
    pub answer_encoder: closer_models::source::AnswerEncoder,

    /// The fake generator's time per word, in milliseconds.
    #[arg(long, env = "CLOSER_FAKE_TOKEN_MS", default_value_t = 25)]
    pub fake_token_ms: u64,

    /// The fake generator's time before its first word, in milliseconds.
    #[arg(long, env = "CLOSER_FAKE_PREFILL_MS", default_value_t = 300)]
    pub fake_prefill_ms: u64,

    /// Largest request message accepted, in bytes; larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "CLOSER_MAX_REQUEST_BYTES", default_value_t = 4 << 20)]
    pub max_request_bytes: usize,

    /// Events buffered per stream before the server waits for a slow client.
    #[arg(long, env = "CLOSER_STREAM_BUFFER", default_value_t = 64)]
    pub stream_buffer: usize,

    /// Two intents of one clause within this probability of each other are reported as
    /// ambiguous (`Intent.ambiguous_with`).
    #[arg(long, env = "CLOSER_AMBIGUITY_MARGIN", default_value_t = 0.15)]
    pub ambiguity_margin: f32,

    /// The distance gate: a clause less similar to its nearest intent example than this share
    /// of a tenant's examples are to their nearest ones in other folds is out of scope, however
    /// sure the softmax is, as is one farther from its top intent's examples than each of them
    /// is from the others (0 turns both off). Changing it retrains every tenant once.
    #[arg(long, env = "CLOSER_NEAREST_REJECT_RATE", default_value_t = closer_models::intent::NEAREST_REJECT_RATE, value_parser = closer_models::intent::nearest::parse_share)]
    pub nearest_reject_rate: f32,

    /// API keys: `keys` (every call but health and reflection needs a key; see `closer keys`),
    /// `off`, or `auto` = `keys` unless the server listens on a loopback address only.
    #[arg(long, env = "CLOSER_AUTH", value_enum, default_value_t = AuthMode::Auto)]
    pub auth: AuthMode,

    /// TLS certificate chain (PEM) to serve gRPC and the web page over TLS; needs `--tls-key`.
    #[arg(long, env = "CLOSER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) of `--tls-cert`.
    #[arg(long, env = "CLOSER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Log format: `text` or `json`. The level comes from RUST_LOG (default `info`).
    #[arg(long, env = "CLOSER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Lets webhook endpoints use loopback addresses (and `http://` to them): for local
    /// receivers and tests. Private, link-local and other internal addresses stay refused.
    #[arg(long, env = "CLOSER_WEBHOOKS_ALLOW_LOOPBACK")]
    pub webhooks_allow_loopback: bool,

    /// Multiplies every wait of the webhook retry schedule (5 s … 20 h); below 1 for tests.
    #[arg(long, env = "CLOSER_WEBHOOKS_RETRY_SCALE", default_value_t = 1.0)]
    pub webhooks_retry_scale: f64,

    /// How long a webhook receiver has to answer 2xx, in seconds. An attempt in flight holds
    /// its delivery this long (plus a second) before any replica may try it again.
    #[arg(long, env = "CLOSER_WEBHOOKS_TIMEOUT_SECS", default_value_t = 15)]
    pub webhooks_timeout_secs: u64,

    /// CRM connectors per tenant (HubSpot, Salesforce, Marketo): a JSON file naming, per
    /// account, the tenant, where the credentials are (environment variables or secret files,
    /// never the credentials themselves), the base URL and the limits. See README "HubSpot",
    /// "Salesforce", "Marketo".
    #[arg(long, env = "CLOSER_CONNECTORS")]
    pub connectors: Option<PathBuf>,
}

pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("closer")
}

impl ServeConfig {
    /// A config for tests and tools: loopback with an OS-chosen port.
    pub fn for_tests(data_dir: PathBuf, model_dir: PathBuf) -> Self {
        Self {
            addr: "127.0.0.1:0".parse().expect("loopback address"),
            data_dir,
            database_url: None,
            nats_url: None,
            model_dir,
            max_message_chars: 2000,
            max_turns: 200,
            event_retention_days: 30,
            widget_js: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../web/widget/dist/widget.js"
            )),
            max_new_tokens: 160,
            max_pending_replies: 64,
            tenant_max_pending_replies: 32,
            generator_slots: 4,
            generator: GeneratorKind::Real,
            intent_encoder: Default::default(),
            answer_encoder: Default::default(),
            fake_token_ms: 25,
            fake_prefill_ms: 300,
            max_request_bytes: 4 << 20,
            stream_buffer: 64,
            ambiguity_margin: 0.15,
            nearest_reject_rate: closer_models::intent::NEAREST_REJECT_RATE,
            auth: AuthMode::Auto,
            tls_cert: None,
            tls_key: None,
            log_format: LogFormat::Text,
            webhooks_allow_loopback: false,
            webhooks_retry_scale: 1.0,
            webhooks_timeout_secs: 15,
            connectors: None,
        }
    }
}

impl ServeConfig {
    /// The TLS identity (certificate chain and key, PEM) when TLS is configured.
    pub fn tls_identity(&self) -> anyhow::Result<Option<tonic::transport::Identity>> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key"),
            (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert"),
            (Some(c), Some(k)) => {
                let read = |flag: &str, p: &PathBuf| {
                    std::fs::read(p).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))
                };
                let (cert, key) = (read("--tls-cert", c)?, read("--tls-key", k)?);
                for (flag, pem, want) in [
                    ("--tls-cert", &cert, "CERTIFICATE"),
                    ("--tls-key", &key, "PRIVATE KEY"),
                ] {
                    if !String::from_utf8_lossy(pem).contains(want) {
                        anyhow::bail!("{flag}: no PEM {want} block");
                    }
                }
                Ok(Some(tonic::transport::Identity::from_pem(cert, key)))
            }
        }
    }

    /// The connectors file, read and checked (tokens included); none without `--connectors`.
    pub fn connectors(&self) -> anyhow::Result<closer_connectors::config::Connectors> {
        match &self.connectors {
            Some(path) => Ok(closer_connectors::config::load(path)?),
            None => Ok(Default::default()),
        }
    }

    /// The webhook delivery worker's settings.
    pub fn webhook_worker(&self) -> closer_webhooks::worker::WorkerConfig {
        closer_webhooks::worker::WorkerConfig {
            allow_loopback: self.webhooks_allow_loopback,
            schedule: closer_webhooks::schedule::RetrySchedule::scaled(self.webhooks_retry_scale),
            timeout: std::time::Duration::from_secs(self.webhooks_timeout_secs.max(1)),
            retention: (self.event_retention_days > 0).then(|| {
                std::time::Duration::from_secs(u64::from(self.event_retention_days) * 86_400)
            }),
            ..Default::default()
        }
    }

    /// Whether calls need an API key.
    pub fn keys_required(&self) -> bool {
        self.key_policy() == KeyPolicy::Always
    }

    /// When requests need a key: `--auth keys` always, `off` never, `auto` always unless the
    /// server listens on loopback only, where only proxied requests need one.
    pub fn key_policy(&self) -> KeyPolicy {
        match self.auth {
            AuthMode::Keys => KeyPolicy::Always,
            AuthMode::Off => KeyPolicy::Never,
            AuthMode::Auto if self.addr.ip().is_loopback() => KeyPolicy::ProxiedOnly,
            AuthMode::Auto => KeyPolicy::Always,
        }
    }

    /// How tenants' intent classifiers are trained and read.
    pub fn classifier_config(&self) -> closer_models::intent::ClassifierConfig {
        closer_models::intent::ClassifierConfig {
            ambiguity_margin: self.ambiguity_margin,
            nearest_reject_rate: self.nearest_reject_rate,
            ..Default::default()
        }
    }
}

/// When a request must present a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    Always,
    Never,
    /// `--auth auto` on a loopback address: a direct local caller needs none, but a request
    /// that came through a proxy (it carries `forwarded`, `x-forwarded-for` or `x-real-ip`)
    /// does — behind a reverse proxy on the same host every caller is "local".
    ProxiedOnly,
}

impl KeyPolicy {
    pub(crate) fn needs_key<B>(self, req: &http::Request<B>) -> bool {
        match self {
            KeyPolicy::Always => true,
            KeyPolicy::Never => false,
            KeyPolicy::ProxiedOnly => ["forwarded", "x-forwarded-for", "x-real-ip"]
                .iter()
                .any(|h| req.headers().contains_key(*h)),
        }
    }
}
