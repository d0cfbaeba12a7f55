//! What replicas on one database share through the store besides conversations: a tenant's
//! playbook, and its intent set with the model trained for it. `Playbooks.Upload` and
//! `Intents.Upload` on one replica put them (after checking, training and swapping in there);
//! every replica follows the store's documents and swaps in what another put — the model as
//! trained, never training it again.

use crate::engine::{Engine, MODEL_FILE, PLAYBOOK_FILE, SET_FILE};
use crate::Result;

/// Shares a playbook this replica has just swapped in.
pub fn put_playbook(engine: &Engine, tenant: &str, yaml: &str) -> Result<u64> {
    Ok(engine.store.put_document(tenant, PLAYBOOK_FILE, yaml.as_bytes())?)
}

/// Shares the intent set and model a tenant has just trained and swapped in: the model first,
/// so a replica that sees the set finds its model.
pub fn put_intents(engine: &Engine, tenant: &str) -> Result<u64> {
    let (set, model) = engine.tenant(tenant)?.intent_files()?;
    engine.store.put_document(tenant, MODEL_FILE, &model)?;
    Ok(engine.store.put_document(tenant, SET_FILE, &set)?)
}

/// Applies one shared document, unless this replica has it already: a tenant's playbook, or
/// its intent set (with the model stored beside it). Whether it changed anything.
fn apply(engine: &Engine, d: &closer_store::Document) -> Result<bool> {
    let tenant = engine.tenant(&d.tenant)?;
    match d.name.as_str() {
        PLAYBOOK_FILE => tenant.set_playbook_if_changed(&String::from_utf8_lossy(&d.content)),
        SET_FILE => {
            let Some(model) = engine.store.document(&d.tenant, MODEL_FILE)? else {
                return Ok(false);
            };
            tenant.adopt_intents(
                &String::from_utf8_lossy(&d.content),
                &model.content,
                engine.models.intents(),
                &engine.classifier_config,
            )
        }
        // The model comes with its set.
        _ => Ok(false),
    }
}

/// Applies every document put after `seen` on this replica (a tenant it does not have, or a
/// playbook its intents refuse, is logged and skipped); returns the newest version seen. The
/// server calls this every half second on a shared database; from 0 at start-up, so a replica
/// that starts late catches up.
pub fn apply_after(engine: &Engine, seen: u64) -> Result<u64> {
    let mut last = seen;
    for d in engine.store.documents_after(seen)? {
        last = last.max(d.version);
        match apply(engine, &d) {
            Ok(true) => tracing::info!(tenant = %d.tenant, name = %d.name, version = d.version, "shared document applied"),
            Ok(false) => {}
            Err(err) => tracing::warn!(tenant = %d.tenant, name = %d.name, error = %err, "shared document not applied"),
        }
    }
    Ok(last)
}
