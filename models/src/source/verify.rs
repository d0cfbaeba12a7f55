//! sha256 sums of files, with a progress bar for large ones; a file that fails its sum is
//! removed so that it never stays in the cache.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

pub fn sha256_file(path: &Path, progress: bool) -> Result<String> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if progress && len > 16 << 20 {
        let b = ProgressBar::new(len);
        b.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_message(format!(
            "verifying {}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        Some(b)
    } else {
        None
    };
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(b) = &bar {
            b.inc(n as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Fails with [`Error::Checksum`] (and deletes the file) when its sha256 differs.
pub fn verify_file(path: &Path, expected: &str, progress: bool) -> Result<()> {
    let actual = sha256_file(path, progress)?;
    if actual != expected {
        let _ = std::fs::remove_file(path);
        return Err(Error::Checksum {
            file: path.display().to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}
