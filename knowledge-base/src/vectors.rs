//! The append-only log of fact vectors (`vectors.log` in a tenant's folder).
//!
//! Vectors are derived data: the index is the truth, and a fact whose vector is missing is embedded
//! again. The log only saves that work. Each entry is keyed by fact id and a hash of the embedded
//! text (with the model name), so a changed fact never reuses a stale vector:
//!
//! `id length (u32) · id · text hash (u64) · dim (u32) · dim × f32 · checksum (u64)`, little-endian;
//! the checksum is FNV-1a over the entry's other bytes. A later entry for an id wins. Reading stops
//! at the first torn or corrupt entry and the file is cut back there, so a crash mid-append costs
//! only that entry. When the log holds far more entries than there are facts it is rewritten
//! (temporary file + rename).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::write_atomic;
use crate::error::{io_err, Result};
use crate::records::Fact;

pub(crate) const FILE: &str = "vectors.log";
/// The file of the format before the log (whole-file rewrites, no checksums); removed on open.
pub(crate) const LEGACY_FILE: &str = "vectors.bin";

pub(crate) type Vector = Arc<[f32]>;

pub(crate) fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

pub(crate) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The text of a fact that its vector encodes.
pub(crate) fn embed_text(f: &Fact) -> String {
    format!("{} {}", f.question, f.answer)
}

/// Hash of the model name and the embedded text.
pub(crate) fn text_hash(f: &Fact, model: &str) -> u64 {
    let h = fnv(FNV_START, model.as_bytes());
    let h = fnv(h, &[0]);
    let h = fnv(h, f.question.as_bytes());
    let h = fnv(h, b" ");
    fnv(h, f.answer.as_bytes())
}

fn encode(out: &mut Vec<u8>, id: &str, hash: u64, v: &[f32]) {
    let start = out.len();
    out.extend_from_slice(&(id.len() as u32).to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&hash.to_le_bytes());
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let sum = fnv(FNV_START, &out[start..]);
    out.extend_from_slice(&sum.to_le_bytes());
}

/// Parses entries until the first torn or corrupt one; returns them and the valid length.
fn decode(bytes: &[u8]) -> (Vec<(String, u64, Vector)>, usize) {
    let mut out = vec![];
    let mut at = 0;
    loop {
        let entry = (|| {
            let mut p: usize = at;
            let mut take = |n: usize| -> Option<&[u8]> {
                let s = bytes.get(p..p.checked_add(n)?)?;
                p += n;
                Some(s)
            };
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let id = String::from_utf8(take(len)?.to_vec()).ok()?;
            let hash = u64::from_le_bytes(take(8)?.try_into().ok()?);
            let dim = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let v: Vector = take(dim.checked_mul(4)?)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let body_end = at + 16 + len + 4 * dim;
            let sum = u64::from_le_bytes(take(8)?.try_into().ok()?);
            (fnv(FNV_START, &bytes[at..body_end]) == sum).then_some(((id, hash, v), body_end + 8))
        })();
        match entry {
            Some((e, next)) => {
                out.push(e);
                at = next;
            }
            None => return (out, at),
        }
    }
}

/// The open log of one tenant.
pub(crate) struct VectorLog {
    path: PathBuf,
    /// Entries in the file now (live or superseded).
    entries: usize,
}

/// The latest vector per id, with the sequence number it was written under.
type Latest = HashMap<String, (u64, Vector)>;

impl VectorLog {
    /// Reads the log in `dir` (cutting a torn tail); returns it and the latest vector per id.
    pub(crate) fn open(dir: &Path) -> Result<(Self, Latest)> {
        let legacy = dir.join(LEGACY_FILE);
        if legacy.exists() {
            std::fs::remove_file(&legacy).map_err(|e| io_err(&legacy, e))?;
        }
        let path = dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(io_err(&path, e)),
        };
        let (entries, valid) = decode(&bytes);
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), dropped_bytes = bytes.len() - valid, "vector log had a torn tail; cut back");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            f.set_len(valid as u64).map_err(|e| io_err(&path, e))?;
        }
        let n = entries.len();
        let map = entries.into_iter().map(|(id, h, v)| (id, (h, v))).collect();
        Ok((Self { path, entries: n }, map))
    }

    /// Appends entries and syncs them to disk.
    pub(crate) fn append<'a>(
        &mut self,
        items: impl IntoIterator<Item = (&'a str, u64, &'a [f32])>,
    ) -> Result<()> {
        let mut out = vec![];
        let mut n = 0;
        for (id, h, v) in items {
            encode(&mut out, id, h, v);
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        let go = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            f.write_all(&out)?;
            f.sync_data()
        };
        go().map_err(|e| io_err(&self.path, e))?;
        self.entries += n;
        Ok(())
    }

    /// Rewrites the log with just `items` when it holds more than twice as many entries as
    /// there are live vectors (plus some slack).
    pub(crate) fn compact_if_large<'a>(
        &mut self,
        live: usize,
        items: impl IntoIterator<Item = (&'a str, u64, &'a [f32])>,
    ) -> Result<()> {
        if self.entries <= 2 * live + 1024 {
            return Ok(());
        }
        let mut out = vec![];
        let mut n = 0;
        for (id, h, v) in items {
            encode(&mut out, id, h, v);
            n += 1;
        }
        write_atomic(&self.path, &out)?;
        self.entries = n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_torn_or_corrupt_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, m) = VectorLog::open(dir.path()).unwrap();
        assert!(m.is_empty());
        log.append([("a", 1, &[1.0f32, 2.0][..]), ("b", 2, &[3.0, 4.0][..])])
            .unwrap();
        log.append([("a", 3, &[5.0f32, 6.0][..])]).unwrap();
        let path = dir.path().join(FILE);
        let good = std::fs::read(&path).unwrap();
        // A torn append.
        let mut torn = good.clone();
        torn.extend_from_slice(&[9, 0, 0, 0, b'x']);
        std::fs::write(&path, &torn).unwrap();
        let (log2, m) = VectorLog::open(dir.path()).unwrap();
        assert_eq!(log2.entries, 3);
        assert_eq!(m["a"].0, 3);
        assert_eq!(&*m["a"].1, &[5.0, 6.0]);
        assert_eq!(&*m["b"].1, &[3.0, 4.0]);
        assert_eq!(std::fs::read(&path).unwrap(), good, "torn tail cut back");
        // A flipped bit in the last entry drops just that entry.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 12] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let (_, m) = VectorLog::open(dir.path()).unwrap();
        assert_eq!(m["a"].0, 1);
    }

    #[test]
    fn compaction_keeps_only_live_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = VectorLog::open(dir.path()).unwrap();
        for i in 0..1100u64 {
            log.append([("same", i, &[i as f32][..])]).unwrap();
        }
        log.compact_if_large(1, [("same", 1099, &[1099.0f32][..])])
            .unwrap();
        let (log, m) = VectorLog::open(dir.path()).unwrap();
        assert_eq!(log.entries, 1);
        assert_eq!(m["same"].0, 1099);
    }

    #[test]
    fn the_text_hash_depends_on_model_and_text() {
        let f = Fact {
            id: "x".into(),
            kind: "faq".into(),
            question: "q".into(),
            answer: "a".into(),
            tags: vec![],
            intents: vec![],
            valid_from: None,
            valid_until: None,
        };
        let mut g = f.clone();
        g.answer = "b".into();
        assert_ne!(text_hash(&f, "m"), text_hash(&g, "m"));
        assert_ne!(text_hash(&f, "m"), text_hash(&f, "n"));
        g.answer = "a".into();
        g.tags = vec!["t".into()];
        assert_eq!(text_hash(&f, "m"), text_hash(&g, "m"));
    }
}
