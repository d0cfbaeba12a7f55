//! What replicas on one database share through the store besides conversations: a tenant's
//! playbook. `Playbooks.Upload` on one replica puts it (after checking and swapping it in
//! there); every replica follows the store's documents and swaps in what another put.

use crate::engine::{Engine, PLAYBOOK_FILE};
use crate::Result;

/// Shares a playbook this replica has just swapped in.
pub fn put_playbook(engine: &Engine, tenant: &str, yaml: &str) -> Result<u64> {
    Ok(engine.store.put_document(tenant, PLAYBOOK_FILE, yaml.as_bytes())?)
}

/// Applies one shared document: a tenant's playbook, unless this replica has it already.
/// Whether it changed anything.
fn apply(engine: &Engine, d: &closer_store::Document) -> Result<bool> {
    if d.name != PLAYBOOK_FILE {
        return Ok(false);
    }
    let tenant = engine.tenant(&d.tenant)?;
    tenant.set_playbook_if_changed(&String::from_utf8_lossy(&d.content))
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
