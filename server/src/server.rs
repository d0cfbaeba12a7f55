//! Building and running the gRPC server: health (NOT_SERVING until models are loaded and the
//! indexes are open, and again while draining), reflection v1 and v1alpha, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use closer_models::source::ModelPaths;
use closer_proto::v1 as pb;
use tokio::sync::{oneshot, watch};
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::app::AppState;
use crate::config::ServeConfig;
use crate::grpc::{AssistantService, IntentsService, KnowledgeService};
use crate::grpc::{
    ConversationsService, EventsService, LeadsService, PlaybooksService, ReportsService,
    RepsService, WebhooksService,
};
use closer_sales::engine::{Engine, Models};

/// Where the server gets its models.
pub enum ModelSource {
    /// Load the real candle models from ready files.
    Files(ModelPaths),
    /// Use models already built (tests pass fakes or shared real models here).
    Ready(Models),
}

/// Startup progress, observable by tests and tools.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    Loading,
    Ready { seconds: f64 },
    Failed(String),
}

const SERVICES: [&str; 11] = [
    "",
    "closer.v1.Assistant",
    "closer.v1.Knowledge",
    "closer.v1.Intents",
    "closer.v1.Leads",
    "closer.v1.Events",
    "closer.v1.Playbooks",
    "closer.v1.Reps",
    "closer.v1.Conversations",
    "closer.v1.Reports",
    "closer.v1.Webhooks",
];

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for s in SERVICES {
        reporter.set_service_status(s, status).await;
    }
}

/// A server running in this process.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub readiness: watch::Receiver<Readiness>,
    health: HealthReporter,
    shutdown: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Waits until models and tenants are loaded (or loading failed).
    pub async fn wait_ready(&mut self) -> anyhow::Result<f64> {
        loop {
            match self.readiness.borrow_and_update().clone() {
                Readiness::Ready { seconds } => return Ok(seconds),
                Readiness::Failed(e) => anyhow::bail!("startup failed: {e}"),
                Readiness::Loading => {}
            }
            self.readiness.changed().await?;
        }
    }

    /// Health goes NOT_SERVING at once; in-flight calls finish; then the server stops.
    pub async fn shutdown(mut self, grace: Duration) -> anyhow::Result<()> {
        set_health(&self.health, ServingStatus::NotServing).await;
        // New calls get UNAVAILABLE; streams end once their turn in progress has finished.
        self.state.draining.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(grace, &mut self.handle).await {
            Ok(joined) => joined??,
            Err(_) => {
                tracing::warn!("in-flight calls did not finish within {grace:?}; stopping anyway");
                self.handle.abort();
            }
        }
        Ok(())
    }
}

/// The reflection services (v1 and v1alpha) over Closer's and the health service's descriptors.
#[allow(clippy::type_complexity)]
fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(closer_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Browsers: CORS for the origins some tenant allows (each handler then checks the origin
/// against its own tenant's list), and gRPC-Web translated to gRPC on the same port.
fn browsers(
    state: Arc<AppState>,
) -> tower::layer::util::Stack<crate::grpc_web::BrowserLayer, tower_http::cors::CorsLayer> {
    tower::layer::util::Stack::new(crate::grpc_web::BrowserLayer, cors(state))
}

/// CORS for gRPC-Web: an origin is allowed when some tenant lists it in `allowed_origins`.
fn cors(state: Arc<AppState>) -> tower_http::cors::CorsLayer {
    use http::header::{HeaderName, AUTHORIZATION, CONTENT_TYPE};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allowed = move |origin: &http::HeaderValue, _: &http::request::Parts| {
        let (Ok(engine), Ok(origin)) = (state.engine(), origin.to_str()) else {
            return false;
        };
        engine.tenant_ids().iter().any(|id| {
            engine
                .tenant(id)
                .is_ok_and(|t| t.kb.profile.allowed_origins.iter().any(|a| a == origin))
        })
    };
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(allowed))
        .allow_methods([http::Method::POST])
        .allow_headers([
            CONTENT_TYPE,
            AUTHORIZATION,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(600))
}

/// Binds, starts serving at once (health NOT_SERVING), and loads models and tenants in the
/// background; health flips to SERVING when they are ready.
pub async fn start(config: ServeConfig, models: ModelSource) -> anyhow::Result<RunningServer> {
    let started = Instant::now();
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    // A bad connectors file (or a token not found) stops start-up here, before serving.
    let connectors = config.connectors()?;
    let state = AppState::new(config.clone());
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    // HTTP/1.1 too: browsers load the leaderboard page from the same port.
    let key_policy = config.key_policy();
    let mut builder = tonic::transport::Server::builder();
    let tls = config.tls_identity()?;
    let tls_on = tls.is_some();
    if let Some(identity) = tls {
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let limit = config.max_request_bytes;
    let router = builder
        .accept_http1(true)
        .layer(browsers(state.clone()))
        .layer(crate::auth::AuthLayer {
            state: state.clone(),
            policy: key_policy,
        })
        .add_routes(tonic::service::Routes::from(crate::web::router(
            state.clone(),
        )))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::assistant_server::AssistantServer::new(AssistantService {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            pb::knowledge_server::KnowledgeServer::new(KnowledgeService {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            pb::intents_server::IntentsServer::new(IntentsService {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        );
    let router = sales_services(router, &state, limit);
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let handle = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = shutdown_rx.await;
    }));
    tracing::info!(%addr, api_keys = ?key_policy, tls = tls_on, "listening (NOT_SERVING until models and tenants are loaded)");

    let ready_rx = spawn_loader(
        models,
        &config,
        connectors,
        state.clone(),
        health.clone(),
        started,
    );

    Ok(RunningServer {
        addr,
        state,
        readiness: ready_rx,
        health,
        shutdown: Some(shutdown_tx),
        handle,
    })
}

/// The selling side's services (leads, events, playbooks, reps, conversations, reports,
/// webhooks), each with the request size limit.
fn sales_services<L>(
    router: tonic::transport::server::Router<L>,
    state: &Arc<AppState>,
    limit: usize,
) -> tonic::transport::server::Router<L> {
    router
        .add_service(
            pb::leads_server::LeadsServer::new(LeadsService {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            pb::events_server::EventsServer::new(EventsService {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            pb::playbooks_server::PlaybooksServer::new(PlaybooksService {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            pb::reps_server::RepsServer::new(RepsService {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            pb::conversations_server::ConversationsServer::new(ConversationsService {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            pb::reports_server::ReportsServer::new(ReportsService {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            pb::webhooks_server::WebhooksServer::new(WebhooksService {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
}

/// Loads the models and the tenants on a blocking thread; health flips to SERVING when done.
fn spawn_loader(
    models: ModelSource,
    config: &ServeConfig,
    connectors: closer_connectors::config::Connectors,
    state: Arc<AppState>,
    health: HealthReporter,
    started: Instant,
) -> watch::Receiver<Readiness> {
    let (ready_tx, ready_rx) = watch::channel(Readiness::Loading);
    let data_dir = config.data_dir.clone();
    let database_url = config.database_url.clone();
    let shared_store = database_url.is_some();
    let nats_url = config.nats_url.clone();
    let with_nats = nats_url.is_some();
    let classifier_config = config.classifier_config();
    let intent_encoder = config.intent_encoder.clone();
    let answer_encoder = config.answer_encoder;
    let retention_days = config.event_retention_days;
    let fake = (config.generator == crate::config::GeneratorKind::Fake).then(|| {
        (
            Duration::from_millis(config.fake_token_ms),
            Duration::from_millis(config.fake_prefill_ms),
        )
    });
    tokio::spawn(async move {
        let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<Engine> {
            let models = match models {
                ModelSource::Files(paths) => {
                    Models::load_with(&paths, fake, &intent_encoder, answer_encoder)?
                }
                ModelSource::Ready(m) => m,
            };
            Ok(Engine::open(
                models,
                &data_dir,
                database_url.as_deref(),
                classifier_config,
            )?)
        })
        .await;
        let loaded = match (loaded, nats_url) {
            (Ok(Ok(mut engine)), Some(url)) => {
                let last = engine.store.last_cursor().unwrap_or(0);
                match closer_store::nats::NatsBus::connect(&url, last).await {
                    Ok(bus) => {
                        engine.bus = Arc::new(bus);
                        Ok(Ok(engine))
                    }
                    Err(e) => Ok(Err(anyhow::anyhow!(e))),
                }
            }
            (other, _) => other,
        };
        match loaded {
            Ok(Ok(engine)) => {
                let tenants = engine.tenant_ids();
                let engine = Arc::new(engine);
                spawn_retention(engine.clone(), retention_days);
                if shared_store {
                    // Other replicas write to the same outbox: wake this one's streams for
                    // their events too. With NATS the wake-ups come at once and the poll is
                    // only the fallback (NATS down or a message lost).
                    let every = if with_nats {
                        FOLLOW_EVERY_WITH_NATS
                    } else {
                        FOLLOW_EVERY
                    };
                    closer_store::bus::follow_store(
                        engine.store.clone(),
                        engine.bus.clone(),
                        every,
                    );
                    follow_documents(engine.clone());
                }
                spawn_webhooks(&engine, &state, &connectors);
                let _ = state.engine.set(engine);
                set_health(&health, ServingStatus::Serving).await;
                let seconds = started.elapsed().as_secs_f64();
                tracing::info!(seconds, ?tenants, "SERVING");
                let _ = ready_tx.send(Readiness::Ready { seconds });
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "startup failed");
                let _ = ready_tx.send(Readiness::Failed(e.to_string()));
            }
            Err(e) => {
                let _ = ready_tx.send(Readiness::Failed(e.to_string()));
            }
        }
    });
    ready_rx
}

/// Starts the webhook delivery worker with the configured connectors; it stops when the server
/// drains.
fn spawn_webhooks(
    engine: &Arc<Engine>,
    state: &Arc<AppState>,
    connectors: &closer_connectors::config::Connectors,
) {
    // A connector names the routed rep's owner by the rep's e-mail in the tenant's directory.
    let directory = Arc::downgrade(engine);
    let reps: closer_connectors::RepEmails = Arc::new(move |tenant, rep| {
        let engine = directory.upgrade()?;
        let t = engine.tenant(tenant).ok()?;
        let email = t.kb.snapshot().rep(rep).map(|r| r.email.clone());
        email
    });
    let connectors = match closer_connectors::build(connectors, engine.store.clone(), reps) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "connectors did not start");
            vec![]
        }
    };
    let started = closer_webhooks::worker::spawn(
        engine.store.clone(),
        engine.bus.clone(),
        state.config.webhook_worker(),
        state.metrics.webhooks.clone(),
        connectors,
        state.draining.subscribe(),
    );
    if let Err(e) = started {
        tracing::error!(error = %e, "webhook delivery worker did not start");
    }
}

/// How often a replica on a shared database polls the outbox for other replicas' events.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// The same with NATS wake-ups: only what a lost wake-up may cost.
const FOLLOW_EVERY_WITH_NATS: Duration = Duration::from_secs(2);
/// How often a replica on a shared database looks for what another replica stored (playbooks,
/// intents, knowledge).
const FOLLOW_DOCUMENTS_EVERY: Duration = Duration::from_millis(500);

/// On a shared database: follows what other replicas stored (playbooks, intents, knowledge)
/// and shares this replica's late vectors, every `FOLLOW_DOCUMENTS_EVERY` (from version 0 at
/// start-up: a late replica catches up).
fn follow_documents(engine: Arc<Engine>) {
    tokio::spawn(async move {
        let mut follower = closer_sales::shared::Follower::default();
        loop {
            let e = engine.clone();
            match tokio::task::spawn_blocking(move || {
                let r = follower.step(&e);
                (follower, r)
            })
            .await
            {
                Ok((f, r)) => {
                    follower = f;
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "following shared documents failed; retrying");
                    }
                }
                Err(_) => return,
            }
            tokio::time::sleep(FOLLOW_DOCUMENTS_EVERY).await;
        }
    });
}

/// Removes sales events older than `days` days now and then hourly (nothing when 0).
fn spawn_retention(engine: Arc<Engine>, days: u32) {
    if days == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut hourly = tokio::time::interval(Duration::from_secs(3600));
        loop {
            hourly.tick().await;
            let e = engine.clone();
            let before = closer_store::now_ms() - i64::from(days) * 86_400_000;
            match tokio::task::spawn_blocking(move || e.store.prune_events(before)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(removed = n, days, "event retention"),
                Ok(Err(err)) => tracing::warn!(error = %err, "event retention failed"),
                Err(err) => tracing::warn!(error = %err, "event retention task failed"),
            }
        }
    });
}

/// `closer serve`: start, wait for SIGINT/SIGTERM, drain, stop.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let redacted = format!("{config:?}");
    tracing::info!(config = %redacted, "starting");
    let paths = ModelPaths::new(&config.model_dir);
    let mut server = start(config, ModelSource::Files(paths)).await?;
    tokio::select! {
        r = server.wait_ready() => { r?; }
        _ = shutdown_signal() => {
            return server.shutdown(Duration::from_secs(25)).await;
        }
    }
    shutdown_signal().await;
    tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
    server.shutdown(Duration::from_secs(25)).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
