//! Deterministic stand-ins for fast tests: an embedder that hashes words and character trigrams,
//! and a generator that streams a scripted answer word by word.

use std::ops::ControlFlow;
use std::sync::Arc;

use crate::{AnswerGenerator, Embedder, GenerationRequest, GenerationStats, Result};

/// Hashes lower-cased words and character trigrams into a fixed-size unit vector. Texts sharing
/// words end up close, which is enough for the intent head and retrieval logic to be tested.
pub struct HashEmbedder {
    dim: usize,
}

impl HashEmbedder {
    pub fn new(dim: usize) -> Self {
        Self { dim }
    }
}

impl Default for HashEmbedder {
    fn default() -> Self {
        Self::new(384)
    }
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl Embedder for HashEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; self.dim];
                let lower = t.to_lowercase();
                for w in lower
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                {
                    v[(fnv1a(w) % self.dim as u64) as usize] += 2.0;
                    let padded: Vec<char> = format!(" {w} ").chars().collect();
                    for tri in padded.windows(3) {
                        let s: String = tri.iter().collect();
                        v[(fnv1a(&s) % self.dim as u64) as usize] += 0.5;
                    }
                }
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
                v.iter_mut().for_each(|x| *x /= n);
                v
            })
            .collect())
    }

    fn name(&self) -> &str {
        "hash-embedder (fake)"
    }
}

/// What a [`ScriptedGenerator`] says for a request.
pub type Script = Arc<dyn Fn(&GenerationRequest) -> String + Send + Sync>;

/// Streams whatever its script returns, one word (with its trailing space) at a time.
pub struct ScriptedGenerator {
    script: Script,
    /// Sleep between words, to imitate a real model's pace in tests of streaming and cancellation.
    pub delay: std::time::Duration,
    /// Sleep before the first word, to imitate reading the prompt (prefill).
    pub prefill: std::time::Duration,
}

impl ScriptedGenerator {
    pub fn new(script: Script) -> Self {
        Self {
            script,
            delay: std::time::Duration::ZERO,
            prefill: std::time::Duration::ZERO,
        }
    }

    /// A generator that always answers `text`, whatever it was asked.
    pub fn fixed(text: &str) -> Self {
        let text = text.to_string();
        Self::new(Arc::new(move |_| text.clone()))
    }

    /// A well-behaved generator: restates the facts it was given (the lines of the system prompt
    /// that start with `- `), in order.
    pub fn echo_facts() -> Self {
        Self::new(Arc::new(|req: &GenerationRequest| {
            req.system
                .lines()
                .filter_map(|l| l.strip_prefix("- ").map(str::trim))
                .collect::<Vec<_>>()
                .join(" ")
        }))
    }
}

impl AnswerGenerator for ScriptedGenerator {
    fn generate(
        &self,
        request: &GenerationRequest,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationStats> {
        let start = std::time::Instant::now();
        let text = (self.script)(request);
        let mut stats = GenerationStats {
            prompt_tokens: request.system.split_whitespace().count(),
            ..Default::default()
        };
        let mut first = true;
        // Reading the prompt in chunks (as the real generator does), with a chance to stop
        // between them: an empty piece.
        let mut left = self.prefill;
        while !left.is_zero() {
            let step = left.min(std::time::Duration::from_millis(25).max(self.delay));
            std::thread::sleep(step);
            left -= step;
            if !left.is_zero() && on_text("").is_break() {
                stats.stopped_by_consumer = true;
                stats.total_ms = start.elapsed().as_secs_f64() * 1e3;
                return Ok(stats);
            }
        }
        for piece in text.split_inclusive(' ') {
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
            if first {
                stats.time_to_first_token_ms = start.elapsed().as_secs_f64() * 1e3;
                first = false;
            }
            stats.generated_tokens += 1;
            if on_text(piece).is_break() {
                stats.stopped_by_consumer = true;
                break;
            }
        }
        stats.total_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok(stats)
    }

    fn name(&self) -> &str {
        "scripted (fake)"
    }
}
