//! Builds a Hugging Face `Tokenizer` for Qwen2 from GGUF metadata (no tokenizer.json is shipped):
//! NFC normaliser, the Qwen2 split regex, byte-level BPE over `tokenizer.ggml.tokens`/`merges`,
//! control tokens as special added tokens.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::json;
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// The pre-tokenizer split of Qwen2 (same as its published tokenizer.json).
pub const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn md<'a>(ct: &'a Content, key: &str) -> Result<&'a Value> {
    ct.metadata
        .get(key)
        .ok_or_else(|| Error::Tokenizer(format!("GGUF metadata lacks {key}")))
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>> {
    v.to_vec()
        .map_err(|e| Error::Tokenizer(format!("{key}: {e}")))?
        .iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|e| Error::Tokenizer(format!("{key}: {e}")))
        })
        .collect()
}

/// The tokenizer, and the id of the end-of-turn token that stops generation.
pub fn from_gguf(ct: &Content) -> Result<(Tokenizer, u32)> {
    let tokens = strings(md(ct, "tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
    let merges = strings(md(ct, "tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .iter()
            .map(|x| x.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    let mut added = vec![];
    for (id, tok) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(1);
        // 3 = control, 4 = user-defined: matched whole, never split by BPE.
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3,
            }));
        }
        vocab.insert(tok.as_str(), id as u32);
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    let bytes = serde_json::to_vec(&spec).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let eos = tokenizer
        .token_to_id("<|im_end|>")
        .ok_or_else(|| Error::Tokenizer("vocabulary lacks <|im_end|>".into()))?;
    Ok((tokenizer, eos))
}
