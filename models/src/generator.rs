//! Qwen2.5-Coder-0.5B-Instruct (GGUF): ChatML prompt, greedy decoding, stop on `<|im_end|>`, text
//! streamed as it is decoded. One copy of the weights serves every sequence; each generation has
//! its own KV cache, and forward passes of competing generations are interleaved by
//! [`StepScheduler`] (the least recently busy tenant first). Passes that wait together run as
//! one batched pass ([`Weights::forward_batch`]): the sequence given the model takes the others'
//! rows into its pass and hands them their logits.

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;

use crate::qwen2::{Kernels, KvCache, Segment, Weights};
use crate::share::StepScheduler;
use crate::{AnswerGenerator, Error, GenerationRequest, GenerationStats, Result};

/// Longest prompt accepted, in tokens (the model allows far more; answers need little).
pub const MAX_PROMPT_TOKENS: usize = 2048;

/// Prompt tokens per forward pass while reading the prompt.
const PREFILL_CHUNK: usize = 64;
/// The same for a background sequence (a team pressing past its quota): a foreground pass that
/// arrives waits for at most one pass of the background one, so those passes are kept short —
/// small prefill chunks, no drafted tokens.
const BACKGROUND_PREFILL_CHUNK: usize = 16;
/// Longest prompt read in one pass (longer ones go in [`PREFILL_CHUNK`]s): each pass reads all
/// the weights (and with AMX dequantises them), so one pass costs less than several.
/// Decoding sequences ride in that pass meanwhile.
const SOLO_PREFILL: usize = 256;

/// System prompts (a tenant's instructions and the facts cited) whose keys and values are kept,
/// most recently used last. A prompt that starts the same way (the same instructions; the
/// same facts too, for a question asked again) reads only what differs. About 25 KB a token:
/// 16 prompts of ~100 tokens hold about 40 MB.
const PREFIX_CACHE: usize = 16;
/// Shortest shared start worth reusing, in tokens.
const MIN_REUSE: usize = 8;

/// Prompt-lookup decoding: most tokens drafted per pass. Answers copy spans of the facts
/// ("$80 per user per month billed monthly"); the tokens that followed the same words earlier
/// are proposed and the model checks them all in the pass it makes anyway, keeping those it
/// would have picked itself (greedy, so the answer is the one plain decoding gives: a row's
/// logits do not depend on the other rows of its pass, see `qwen2::Linear`). Worth
/// it only where a pass over several tokens costs little more than over one: with the VNNI
/// kernels a pass over 9 tokens costs about 2 passes over 1; with the per-32-block kernels each
/// token is a full pass, so drafting is off there.
pub const MAX_DRAFT: usize = 8;
/// Tokens drafted in a turn's first pass; then two more after a draft taken whole, and after a
/// miss one more than were taken.
const START_DRAFT: usize = 4;
/// Longest run of trailing tokens looked up, tried longest first.
const LOOKUP_NGRAM: usize = 3;
/// Most token rows in one batched pass: a prefill chunk and a few decoding sequences (in the
/// background, [`BACKGROUND_PREFILL_CHUNK`]).
pub const MAX_PASS_ROWS: usize = 96;

/// One sequence's forward pass, waiting to run (maybe inside another sequence's pass).
struct Pass {
    ids: Vec<u32>,
    pos: usize,
    cache: KvCache,
    all: bool,
}

/// Its logits and its cache with the new rows, or why the batch failed.
type Ran = std::result::Result<(Tensor, KvCache), String>;

/// Passes handed over for batching, and the results of those run in another sequence's pass.
#[derive(Default)]
struct Batcher {
    waiting: Mutex<HashMap<u64, Pass>>,
    ran: Mutex<HashMap<u64, Ran>>,
    ready: Condvar,
}

/// Counts a generation in progress while alive.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Prompt lookup: the tokens (at most `max`) that followed the latest earlier occurrence of the
/// last `n` tokens of `context`, for `n` from [`LOOKUP_NGRAM`] down to 1; empty when none recurs.
pub fn draft_from_context(context: &[u32], max: usize) -> &[u32] {
    let len = context.len();
    if max == 0 || len < 2 {
        return &[];
    }
    for n in (1..=LOOKUP_NGRAM.min(len - 1)).rev() {
        let tail = &context[len - n..];
        if let Some(i) = (0..len - n).rev().find(|&i| &context[i..i + n] == tail) {
            let from = i + n;
            return &context[from..(from + max).min(len)];
        }
    }
    &[]
}

pub struct QwenGenerator {
    model: Weights,
    /// One forward pass at a time (they use every core); competing sequences take turns, and
    /// those waiting together ride in one batched pass.
    steps: StepScheduler,
    tokenizer: Tokenizer,
    eos: u32,
    /// Per share key (tenant): a system prompt's tokens and their cache. Never shared across
    /// keys, so no team can time whether another team's prompt is cached.
    prefixes: Mutex<Vec<(String, Vec<u32>, crate::qwen2::KvCache)>>,
    /// Most tokens drafted per decoding pass (0: plain decoding).
    draft: usize,
    batcher: Batcher,
    /// Generations in progress.
    active: AtomicUsize,
}

impl QwenGenerator {
    pub fn load(path: &Path) -> Result<Self> {
        let device = Device::Cpu;
        let f = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Missing(path.display().to_string())
            } else {
                Error::io(path, e)
            }
        })?;
        let mut reader = BufReader::new(f);
        let content = gguf_file::Content::read(&mut reader)?;
        let (tokenizer, eos) = crate::qwen_tokenizer::from_gguf(&content)?;
        let model = Weights::from_gguf(content, &mut reader, &device)?;
        model.warm_up()?;
        let draft = match model.kernels() {
            Kernels::Vnni | Kernels::Amx => MAX_DRAFT,
            Kernels::Reference => 0,
        };
        Ok(Self {
            draft,
            model,
            steps: StepScheduler::new(std::time::Duration::from_secs(10)),
            tokenizer,
            eos,
            prefixes: Default::default(),
            batcher: Batcher::default(),
            active: AtomicUsize::new(0),
        })
    }

    /// Runs one forward pass of sequence `seq`: waits for the model, then either runs it
    /// together with the passes of other sequences that wait in its class, or finds that
    /// another sequence's pass ran it. Returns its logits, its cache, and whether the pass
    /// was shared with other sequences.
    fn run_pass(
        &self,
        request: &GenerationRequest,
        seq: u64,
        pass: Pass,
    ) -> Result<(Tensor, KvCache, bool)> {
        let rows = pass.ids.len();
        self.batcher.waiting.lock().insert(seq, pass);
        let Some(mut step) = self
            .steps
            .step_or_served(&request.share, seq, request.background)
        else {
            let mut ran = self.batcher.ran.lock();
            loop {
                if let Some(r) = ran.remove(&seq) {
                    return r.map(|(l, c)| (l, c, true)).map_err(Error::Other);
                }
                self.batcher.ready.wait(&mut ran);
            }
        };
        let own = self
            .batcher
            .waiting
            .lock()
            .remove(&seq)
            .ok_or_else(|| Error::Other("pass lost before it ran".into()))?;
        let mut batch = vec![(seq, own)];
        let mut total = rows;
        // A background pass stays short however many background sequences it takes in: a
        // foreground pass that arrives meanwhile waits for all of it.
        let cap = if request.background {
            BACKGROUND_PREFILL_CHUNK
        } else {
            MAX_PASS_ROWS
        };
        // A decoding pass (a token and its draft) does not take a prompt chunk in: it would
        // make that token wait for the whole chunk. A chunk takes decoding passes in (they
        // add little to it).
        let widest = rows.max(MAX_DRAFT + 1);
        self.steps.absorb(&mut step, rows as f64, |t| {
            let mut waiting = self.batcher.waiting.lock();
            let n = waiting.get(&t)?.ids.len();
            if total + n > cap || n > widest {
                return None;
            }
            total += n;
            batch.push((t, waiting.remove(&t)?));
            Some(n as f64)
        });
        let result = {
            let mut segs: Vec<Segment<'_>> = batch
                .iter_mut()
                .map(|(_, p)| Segment {
                    ids: &p.ids,
                    pos: p.pos,
                    cache: &mut p.cache,
                    all: p.all,
                })
                .collect();
            // A panic in the pass must still answer the sequences riding in it.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.model.forward_batch(&mut segs)
            }))
            .unwrap_or_else(|_| Err(candle_core::Error::Msg("the forward pass panicked".into())))
        };
        drop(step);
        let shared = batch.len() > 1;
        let mut batch = batch.into_iter();
        let (_, mine) = batch.next().expect("the pass's own sequence");
        match result {
            Ok(logits) => {
                let mut logits = logits.into_iter();
                let own_logits = logits.next();
                {
                    let mut ran = self.batcher.ran.lock();
                    for ((t, p), l) in batch.zip(logits) {
                        ran.insert(t, Ok((l, p.cache)));
                    }
                }
                self.batcher.ready.notify_all();
                let l = own_logits.ok_or_else(|| Error::Other("no logits".into()))?;
                Ok((l, mine.cache, shared))
            }
            Err(e) => {
                {
                    let mut ran = self.batcher.ran.lock();
                    for (t, _) in batch {
                        ran.insert(t, Err(format!("batched forward pass failed: {e}")));
                    }
                }
                self.batcher.ready.notify_all();
                Err(e.into())
            }
        }
    }

    /// Sets the most tokens drafted per decoding pass (0 turns prompt lookup off).
    pub fn with_draft_limit(mut self, draft: usize) -> Self {
        self.draft = draft;
        self
    }

    pub fn draft_limit(&self) -> usize {
        self.draft
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Forgets every cached prompt prefix.
    pub fn clear_prefix_cache(&self) {
        self.prefixes.lock().clear();
    }

    /// The cached prefix sharing the longest start with `ids` (at most `ids.len() - 1` tokens,
    /// so at least one is read to get logits): that many tokens and their cache.
    fn cached_prefix(
        &self,
        share: &str,
        ids: &[u32],
    ) -> Result<Option<(usize, crate::qwen2::KvCache)>> {
        let mut p = self.prefixes.lock();
        let best = p
            .iter()
            .enumerate()
            .filter(|(_, (s, _, _))| s == share)
            .map(|(i, (_, k, _))| {
                let n = k.iter().zip(ids).take_while(|(a, b)| a == b).count();
                (i, n.min(ids.len().saturating_sub(1)))
            })
            .max_by_key(|&(_, n)| n);
        match best {
            Some((i, n)) if n >= MIN_REUSE => {
                let entry = p.remove(i);
                let cache = if n == entry.1.len() {
                    entry.2.clone()
                } else {
                    entry.2.truncated(n)?
                };
                p.push(entry);
                Ok(Some((n, cache)))
            }
            _ => Ok(None),
        }
    }

    fn keep_prefix(&self, share: &str, ids: &[u32], cache: &crate::qwen2::KvCache) {
        let mut p = self.prefixes.lock();
        p.retain(|(s, k, _)| s != share || k != ids);
        if p.len() >= PREFIX_CACHE {
            p.remove(0);
        }
        p.push((share.to_string(), ids.to_vec(), cache.clone()));
    }

    /// The ChatML prompt for one request.
    pub fn prompt(request: &GenerationRequest) -> String {
        format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            request.system, request.user
        )
    }
}

impl AnswerGenerator for QwenGenerator {
    fn generate(
        &self,
        request: &GenerationRequest,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationStats> {
        let start = Instant::now();
        let prompt = Self::prompt(request);
        let enc = self
            .tokenizer
            .encode_fast(prompt.as_str(), false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let prompt_ids = enc.get_ids().to_vec();
        if prompt_ids.len() > MAX_PROMPT_TOKENS {
            return Err(Error::Other(format!(
                "prompt has {} tokens, more than {MAX_PROMPT_TOKENS}",
                prompt_ids.len()
            )));
        }
        let (reused, mut cache) = match self.cached_prefix(&request.share, &prompt_ids)? {
            Some((n, c)) => (n, c),
            None => (0, self.model.new_cache()),
        };
        let mut stats = GenerationStats {
            prompt_tokens: prompt_ids.len(),
            reused_prompt_tokens: reused,
            ..Default::default()
        };
        let mut sampler = LogitsProcessor::from_sampling(0, Sampling::ArgMax);
        let seq = self.steps.sequence();
        self.active.fetch_add(1, Ordering::Relaxed);
        let _active = Active(&self.active);
        let shared_passes = std::cell::Cell::new(0);
        // Logits after the last of `ids` (or after each, when `all`); the cache gains them.
        let forward = |ids: &[u32], pos: usize, cache: KvCache, all: bool| {
            let pass = Pass {
                ids: ids.to_vec(),
                pos,
                cache,
                all,
            };
            let (logits, cache, shared) = self.run_pass(request, seq, pass)?;
            shared_passes.set(shared_passes.get() + usize::from(shared));
            Ok::<_, Error>((if all { logits } else { logits.squeeze(0)? }, cache))
        };
        // The system part ends with the first `<|im_end|>`: its cache is kept for later prompts.
        let system_end = prompt_ids
            .iter()
            .position(|&t| t == self.eos)
            .map_or(prompt_ids.len(), |i| i + 1);
        // The prompt in chunks, so a competing sequence waits for one chunk, not a whole prefill.
        let chunk_len = if request.background {
            BACKGROUND_PREFILL_CHUNK
        } else {
            PREFILL_CHUNK
        };
        let mut logits = None;
        let mut pos = reused;
        let mut first = true;
        let solo = !request.background && prompt_ids.len() - reused <= SOLO_PREFILL;
        if solo {
            let (l, grown) = forward(&prompt_ids[reused..], pos, cache, false)?;
            (logits, cache) = (Some(l), grown);
            pos = prompt_ids.len();
            if system_end > reused {
                let system = cache.truncated(system_end)?;
                self.keep_prefix(&request.share, &prompt_ids[..system_end], &system);
            }
        }
        let parts = if solo {
            vec![]
        } else {
            vec![
                (reused, system_end.max(reused)),
                (system_end.max(reused), prompt_ids.len()),
            ]
        };
        for (from, to) in parts {
            for chunk in prompt_ids[from..to].chunks(chunk_len) {
                // Between chunks the consumer may stop us (an empty piece carries no text).
                if !first && on_text("").is_break() {
                    stats.stopped_by_consumer = true;
                    stats.total_ms = start.elapsed().as_secs_f64() * 1e3;
                    stats.shared_passes = shared_passes.get();
                    return Ok(stats);
                }
                first = false;
                let (l, grown) = forward(chunk, pos, cache, false)?;
                (logits, cache) = (Some(l), grown);
                pos += chunk.len();
            }
            if to == system_end && to > from {
                self.keep_prefix(&request.share, &prompt_ids[..system_end], &cache);
            }
        }
        let logits = logits.ok_or_else(|| Error::Other("empty prompt".into()))?;
        let mut next = sampler.sample(&logits)?;
        stats.time_to_first_token_ms = start.elapsed().as_secs_f64() * 1e3;
        // The prompt, then the answer so far.
        let mut context = prompt_ids.clone();
        let generated_from = context.len();
        // Bytes of decoded text already handed out.
        let mut emitted = 0usize;
        // Takes `token` into the answer and hands out the text it completes.
        let mut take = |context: &mut Vec<u32>, token: u32| -> Result<ControlFlow<()>> {
            context.push(token);
            let text = self
                .tokenizer
                .decode(&context[generated_from..], true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            // A multi-byte character split across tokens decodes to U+FFFD until complete.
            if text.len() > emitted && !text.ends_with('\u{FFFD}') {
                if on_text(&text[emitted..]).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
                emitted = text.len();
            }
            Ok(ControlFlow::Continue(()))
        };
        let mut budget = self.draft.min(START_DRAFT);
        'decode: while next != self.eos && context.len() - generated_from < request.max_tokens {
            if take(&mut context, next)?.is_break() {
                stats.stopped_by_consumer = true;
                break;
            }
            // `next` and the drafted tokens after it, in one pass: row i holds the logits
            // after input token i.
            // Drafted rows are guesses: with other sequences decoding in the same passes, rows
            // are no longer nearly free, so each sequence drafts less.
            let max_draft = if request.background {
                0
            } else {
                self.draft / self.active.load(Ordering::Relaxed).max(1)
            };
            let room = request.max_tokens - (context.len() - generated_from);
            let draft = draft_from_context(&context, budget.min(max_draft).min(room)).to_vec();
            let pos = context.len() - 1;
            let mut input = Vec::with_capacity(1 + draft.len());
            input.push(next);
            input.extend_from_slice(&draft);
            let (rows, grown) = forward(&input, pos, cache, true)?;
            cache = grown;
            stats.decode_passes += 1;
            stats.drafted_tokens += draft.len();
            next = sampler.sample(&rows.get(0)?)?;
            let mut accepted = 0;
            while accepted < draft.len() && next == draft[accepted] && next != self.eos {
                accepted += 1;
                if take(&mut context, next)?.is_break() {
                    stats.stopped_by_consumer = true;
                    break 'decode;
                }
                next = sampler.sample(&rows.get(accepted)?)?;
            }
            stats.accepted_draft_tokens += accepted;
            // Draft further while drafts are taken whole, less after a miss.
            if !draft.is_empty() {
                budget = if accepted == draft.len() {
                    (budget + 2).min(max_draft)
                } else {
                    (accepted + 1).min(max_draft)
                };
            }
            if accepted < draft.len() {
                // Forget the keys and values of the drafted tokens that were not taken.
                cache = cache.truncated(pos + 1 + accepted)?;
            }
        }
        let generated = &context[generated_from..];
        stats.generated_tokens = generated.len();
        stats.total_ms = start.elapsed().as_secs_f64() * 1e3;
        stats.shared_passes = shared_passes.get();
        Ok(stats)
    }

    fn name(&self) -> &str {
        "Qwen2.5-Coder-0.5B-Instruct"
    }
}

/// Rewrites a GGUF so that tensors in quantisation types without a fast CPU kernel in candle
/// (Q5_0, Q5_1, Q4_1) become Q8_0. Done once, at pull time; the result is cached.
pub fn requantize_for_cpu(src: &Path, dest: &Path, progress: bool) -> Result<()> {
    let f = File::open(src).map_err(|e| Error::io(src, e))?;
    let mut reader = BufReader::new(f);
    let content = gguf_file::Content::read(&mut reader)?;
    let device = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new(names.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "re-quantising for CPU [{bar:30}] {pos}/{len} tensors",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let t = content.tensor(&mut reader, name, &device)?;
        let t = match t.dtype() {
            GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q4_1 => {
                let full = t.dequantize(&device)?;
                QTensor::quantize(&full, GgmlDType::Q8_0)?
            }
            _ => t,
        };
        tensors.push((name.clone(), t));
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(b.0));
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let tmp = dest.with_extension("partial");
    {
        let mut out = BufWriter::new(File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
        gguf_file::write(&mut out, &metadata, &refs)?;
        std::io::Write::flush(&mut out).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))
}

#[cfg(test)]
mod tests {
    use super::draft_from_context;

    #[test]
    fn prompt_lookup_copies_what_followed_the_longest_recent_match() {
        // "… 80 per user per month … per user per year …", the answer so far ends "80 per".
        let ctx = [1, 80, 2, 3, 4, 5, 2, 3, 6, 9, 80, 2];
        // The trigram "9 80 2" never occurred; the bigram "80 2" did, at the start.
        assert_eq!(draft_from_context(&ctx, 3), &[3, 4, 5]);
        assert_eq!(draft_from_context(&ctx, 100), &[3, 4, 5, 2, 3, 6, 9, 80, 2]);
        // The latest of several matches wins.
        let ctx = [2, 7, 2, 8, 2];
        assert_eq!(draft_from_context(&ctx, 2), &[8, 2]);
        // Nothing recurs, nothing to look at, no room.
        assert!(draft_from_context(&[1, 2, 3], 4).is_empty());
        assert!(draft_from_context(&[1], 4).is_empty());
        assert!(draft_from_context(&[], 4).is_empty());
        assert!(draft_from_context(&[5, 5], 0).is_empty());
        assert_eq!(draft_from_context(&[5, 5], 4), &[5]);
    }
}
