//! `closer webhooks`: a tenant's signed-webhook endpoints, straight on the store in the data
//! folder (like `closer keys`): create (the secret printed once), list, delete, rotate,
//! dead-letters, replay. A running server's worker picks the changes up within a second.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use closer_store::{ReplaySelection, Store};
use closer_webhooks::manage;

#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// Add an endpoint and print its signing secret once.
    Create {
        #[arg(long)]
        tenant: String,
        /// https://… (http:// only to loopback, with --allow-loopback).
        #[arg(long)]
        url: String,
        /// Event kinds to send, comma-separated; none = every kind.
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Allow a loopback address (a server needs --webhooks-allow-loopback to deliver there).
        #[arg(long)]
        allow_loopback: bool,
    },
    /// List a tenant's endpoints (never their secrets).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Remove an endpoint and its deliveries.
    Delete {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// A new secret, printed once; the old one signs beside it for 24 hours.
    Rotate {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Deliveries given up after the last retry.
    DeadLetters {
        #[arg(long)]
        tenant: String,
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Send deliveries again with their original webhook ids: the dead-lettered ones, or a
    /// cursor range.
    Replay {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        dead_letters: bool,
        #[arg(long, requires = "to")]
        from: Option<u64>,
        #[arg(long, requires = "from")]
        to: Option<u64>,
    },
}

fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

fn check_tenant(data_dir: &Path, tenant: &str) -> anyhow::Result<()> {
    closer_kb::load::validate_tenant_id(tenant).map_err(|m| anyhow::anyhow!("--tenant: {m}"))?;
    if !closer_kb::tenant_dir(data_dir, tenant).exists() {
        anyhow::bail!("--tenant: no tenant {tenant:?} in {}", data_dir.display());
    }
    Ok(())
}

/// `closer sync status`: every consumer of the tenant's outbox, as a table.
pub fn sync_status(
    tenant: &str,
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = closer_store::backend::open(database_url, data_dir)?;
    let (consumers, last) = rt.block_on(closer_webhooks::status::consumers(store, tenant))?;
    println!("outbox of {tenant}: newest cursor {last}");
    println!("| kind | name | cursor | lag | pending | dead | last error | disabled |");
    println!("|---|---|---|---|---|---|---|---|");
    for c in consumers {
        let name = match &c.url {
            Some(url) => format!("{} ({url})", c.name),
            None => c.name.clone(),
        };
        println!(
            "| {} | {name} | {} | {} | {} | {} | {} | {} |",
            c.kind.as_str(),
            c.cursor,
            c.lag,
            c.pending,
            c.dead,
            c.last_error.as_deref().unwrap_or("-"),
            c.disabled.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

pub fn run(
    command: WebhooksCommand,
    data_dir: &PathBuf,
    database_url: Option<&str>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let store: Arc<dyn Store> = closer_store::backend::open(database_url, data_dir)?;
    match command {
        WebhooksCommand::Create {
            tenant,
            url,
            kinds,
            description,
            allow_loopback,
        } => {
            check_tenant(data_dir, &tenant)?;
            let known = closer_server::grpc::events::KINDS;
            if let Some(k) = kinds.iter().find(|k| !known.contains(&k.as_str())) {
                anyhow::bail!("--kinds: unknown kind {k:?}; one of {}", known.join(", "));
            }
            let req = manage::NewEndpoint {
                tenant,
                url,
                kinds,
                description,
            };
            let created = rt.block_on(manage::create(store, req, allow_loopback))?;
            let e = &created.endpoint;
            eprintln!(
                "created {} for {} → {}; its signing secret is shown only now:",
                e.id, e.tenant, e.url
            );
            println!("{}", created.secret.expose());
        }
        WebhooksCommand::List { tenant } => {
            println!("| id | url | kinds | description | created | pending | dead | disabled |");
            println!("|---|---|---|---|---|---|---|---|");
            for e in rt.block_on(manage::list(store, &tenant))? {
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    e.id,
                    e.url,
                    if e.kinds.is_empty() {
                        "all".to_string()
                    } else {
                        e.kinds.join(",")
                    },
                    e.description,
                    when(e.created_ms),
                    e.pending,
                    e.dead,
                    e.disabled
                        .map(|(at, why)| format!("{} ({why})", when(at)))
                        .unwrap_or_default()
                );
            }
        }
        WebhooksCommand::Delete { tenant, id } => {
            rt.block_on(manage::delete(store, &tenant, &id))?;
            println!("deleted {id}");
        }
        WebhooksCommand::Rotate { tenant, id } => {
            let r = rt.block_on(manage::rotate(store, &tenant, &id))?;
            eprintln!(
                "rotated {}; the old secret signs beside the new one until {}; the new one is \
                 shown only now:",
                r.endpoint.id,
                r.endpoint
                    .previous
                    .as_ref()
                    .map(|(_, until)| when(*until))
                    .unwrap_or_default()
            );
            println!("{}", r.secret.expose());
        }
        WebhooksCommand::DeadLetters { tenant, endpoint } => {
            println!("| endpoint | webhook-id | kind | conversation | attempts | last status | last answer |");
            println!("|---|---|---|---|---|---|---|");
            for d in rt.block_on(manage::dead_letters(store, &tenant, endpoint.as_deref()))? {
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    d.endpoint_id,
                    closer_webhooks::payload::webhook_id(d.cursor),
                    d.kind,
                    d.conversation_id.unwrap_or_default(),
                    d.attempts,
                    d.last_status.map(|s| s.to_string()).unwrap_or_default(),
                    d.last_response
                        .chars()
                        .take(80)
                        .collect::<String>()
                        .replace(['|', '\n'], " ")
                );
            }
        }
        WebhooksCommand::Replay {
            tenant,
            id,
            dead_letters,
            from,
            to,
        } => {
            let which = match (dead_letters, from, to) {
                (true, _, _) => ReplaySelection::Dead,
                (false, Some(from), Some(to)) => ReplaySelection::Range { from, to },
                _ => anyhow::bail!("--dead-letters, or --from and --to"),
            };
            let n = rt.block_on(manage::replay(store, &tenant, &id, which))?;
            println!("queued {n} deliveries again for {id}");
        }
    }
    Ok(())
}
