//! Which store a deployment runs on: PostgreSQL when a database URL is configured (several
//! replicas share it), else the SQLite file under the data folder.

use std::path::Path;
use std::sync::Arc;

use crate::postgres::PgStore;
use crate::sqlite::SqliteStore;
use crate::{Result, Store, SQLITE_FILE};

/// Opens PostgreSQL at `database_url` when given (applying its migrations), else the SQLite
/// file under `data_dir`.
pub fn open(database_url: Option<&str>, data_dir: &Path) -> Result<Arc<dyn Store>> {
    Ok(match database_url.filter(|u| !u.trim().is_empty()) {
        Some(url) => Arc::new(PgStore::connect(url)?),
        None => Arc::new(SqliteStore::open(&data_dir.join(SQLITE_FILE))?),
    })
}
