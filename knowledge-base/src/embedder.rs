//! Fact vectors from the tenant's [`Embedder`]: the state a knowledge base shares with its
//! background embedding thread, the thread itself, and keeping the vector log compact.

use std::sync::Arc;
use std::time::{Duration, Instant};

use closer_models::Embedder;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::records::Fact;
use crate::snapshot::Snapshot;
use crate::vectors::{embed_text, text_hash, Vector, VectorLog};

/// Where the background embedder stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbeddingStatus {
    pub facts: usize,
    pub pending: usize,
    pub running: bool,
    /// The last failure of the background embedder; it stops until the next batch.
    pub error: Option<String>,
}

/// Batches with at most this many new or changed facts embed them before returning; larger
/// ones return once BM25 has them and leave the vectors to a background thread.
pub const SYNC_EMBED_LIMIT: usize = 256;
/// Facts embedded per background step (one snapshot swap and one log append each).
const EMBED_CHUNK: usize = 64;

#[derive(Default)]
struct WorkerState {
    running: bool,
    /// New work arrived while running.
    dirty: bool,
    stop: bool,
    error: Option<String>,
}

/// The parts the background embedder shares with the knowledge base.
pub(crate) struct Shared {
    state: RwLock<Arc<Snapshot>>,
    /// One writer at a time; it owns the vector log.
    pub(crate) writing: Mutex<VectorLog>,
    pub(crate) embedder: Arc<dyn Embedder>,
    worker: Mutex<WorkerState>,
    worker_idle: Condvar,
}

impl Shared {
    pub(crate) fn new(snapshot: Snapshot, log: VectorLog, embedder: Arc<dyn Embedder>) -> Self {
        Self {
            state: RwLock::new(Arc::new(snapshot)),
            writing: Mutex::new(log),
            embedder,
            worker: Mutex::new(WorkerState::default()),
            worker_idle: Condvar::new(),
        }
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.state.read().clone()
    }

    pub(crate) fn swap(&self, next: Snapshot) {
        *self.state.write() = Arc::new(next);
    }

    /// Tells the background embedder to stop after its current chunk.
    pub(crate) fn stop(&self) {
        self.worker.lock().stop = true;
    }

    /// Where the background embedder stands.
    pub(crate) fn status(&self) -> EmbeddingStatus {
        let snap = self.snapshot();
        let w = self.worker.lock();
        EmbeddingStatus {
            facts: snap.facts.len(),
            pending: snap.pending_vectors(),
            running: w.running,
            error: w.error.clone(),
        }
    }

    /// Waits until the background embedder is idle or `timeout` passes; true when every fact
    /// has its vector.
    pub(crate) fn wait_for_vectors(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut w = self.worker.lock();
        while w.running {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.worker_idle
                .wait_for(&mut w, left.min(Duration::from_millis(200)));
        }
        drop(w);
        self.snapshot().pending_vectors() == 0
    }

    /// Rewrites the vector log when superseded entries dominate it.
    pub(crate) fn compact_vectors(&self) -> Result<()> {
        let mut log = self.writing.lock();
        let snap = self.snapshot();
        let model = self.embedder.name().to_string();
        let live: Vec<(&str, u64, &[f32])> = snap
            .facts
            .iter()
            .zip(snap.vectors.iter())
            .filter_map(|(f, v)| Some((f.id.as_str(), text_hash(f, &model), &v.as_ref()?[..])))
            .collect();
        log.compact_if_large(live.len(), live.iter().copied())
    }

    /// Starts the background embedder unless it runs already (then it looks again when done).
    pub(crate) fn kick(self: &Arc<Self>) {
        let mut w = self.worker.lock();
        w.error = None;
        if w.running {
            w.dirty = true;
            return;
        }
        w.running = true;
        w.dirty = false;
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("closer-kb-embed".into())
            .spawn(move || me.run_worker());
        if let Err(e) = spawned {
            w.running = false;
            w.error = Some(format!("could not start the embedder thread: {e}"));
        }
    }

    fn run_worker(self: Arc<Self>) {
        loop {
            let done = self.embed_pending();
            let mut w = self.worker.lock();
            match done {
                Err(e) => {
                    tracing::error!(error = %e, "background embedding stopped");
                    w.error = Some(e.to_string());
                }
                Ok(()) if w.dirty && !w.stop => {
                    w.dirty = false;
                    continue;
                }
                Ok(()) => {}
            }
            w.running = false;
            self.worker_idle.notify_all();
            return;
        }
    }

    /// Embeds facts without a vector, a chunk at a time, publishing each chunk.
    pub(crate) fn embed_pending(&self) -> Result<()> {
        let model = self.embedder.name().to_string();
        let dim = self.embedder.dim();
        loop {
            if self.worker.lock().stop {
                return Ok(());
            }
            let snap = self.snapshot();
            let todo: Vec<(&Fact, u64, String)> = snap
                .facts
                .iter()
                .zip(snap.vectors.iter())
                .filter(|(_, v)| v.is_none())
                .take(EMBED_CHUNK)
                .map(|(f, _)| (f, text_hash(f, &model), embed_text(f)))
                .collect();
            if todo.is_empty() {
                return Ok(());
            }
            let texts: Vec<&str> = todo.iter().map(|t| t.2.as_str()).collect();
            let computed = self.embedder.embed(&texts)?;
            if computed.len() != todo.len() || computed.iter().any(|v| v.len() != dim) {
                return Err(Error::BadInput(format!(
                    "the encoder returned {} vectors of the wrong size for {} texts",
                    computed.len(),
                    todo.len()
                )));
            }
            let mut log = self.writing.lock();
            let cur = self.snapshot();
            let mut vectors = (*cur.vectors).clone();
            let mut fresh: Vec<(&str, u64, Vector)> = vec![];
            for ((f, h, _), v) in todo.iter().zip(computed) {
                let Some(&i) = cur.by_id.get(&f.id) else {
                    continue; // deleted meanwhile
                };
                if vectors[i].is_none() && text_hash(&cur.facts[i], &model) == *h {
                    let v: Vector = v.into();
                    vectors[i] = Some(v.clone());
                    fresh.push((&f.id, *h, v));
                }
            }
            log.append(fresh.iter().map(|(id, h, v)| (*id, *h, &v[..])))?;
            self.swap(Snapshot {
                vectors: Arc::new(vectors),
                ..(*cur).clone()
            });
        }
    }
}
