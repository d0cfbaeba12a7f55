//! A tenant's folder on disk: its path, the tenants present, and JSON files written atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Error, Result};

/// Paths of a tenant's folder.
pub fn tenant_dir(data_dir: &Path, tenant: &str) -> PathBuf {
    data_dir.join("tenants").join(tenant)
}

/// Tenant ids found in the data directory.
pub fn list_tenants(data_dir: &Path) -> Result<Vec<String>> {
    let dir = data_dir.join("tenants");
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for e in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
        let e = e.map_err(|e| io_err(&dir, e))?;
        if e.path().join("tenant.yaml").is_file() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::BadInput(format!("{}: {e}", path.display())))
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::BadInput(e.to_string()))
}

/// Writes a file atomically: temporary file in the same folder, fsync, rename. The tenant
/// folder's other files (playbook, intent set) are written with it too.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let go = || -> std::io::Result<()> {
        let mut temp = tempfile::Builder::new();
        // The mode `File::create` gives (0o666 less the umask), not tempfile's private 0o600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            temp.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let mut f = temp.tempfile_in(dir)?;
        f.write_all(bytes)?;
        f.as_file().sync_all()?;
        f.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    go().map_err(|e| io_err(path, e))
}
