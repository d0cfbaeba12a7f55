//! A trained classifier on disk: one safetensors file (the head's arrays as named tensors) whose
//! metadata holds the labels, calibration, training report and settings as JSON, plus a sha256
//! of the tensor bytes. Written atomically (temporary file in the same folder, fsync, rename).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::Digest;

use super::head::{Featurizer, LinearHead};
use super::nearest::Examples;
use super::ngrams::Ngrams;
use super::train::{ClassifierConfig, TrainReport, TrainedHead};
use crate::{Error, Result};

/// What the metadata's `format` key says; a file without it is not a Closer intent model.
const FORMAT: &str = "closer-intent-head/1";
/// How the binary files of Closer 0.1 began: such a file is retrained, with this said.
const OLD_MAGIC: &[u8; 8] = b"CLOSERIM";

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The head's arrays and the distance gate's examples, named, in the order they are hashed.
fn arrays(
    head: &LinearHead,
    examples: &Examples,
) -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
    let k = head.labels.len();
    let (hashes, idf): (&[u64], &[f32]) = match &head.featurizer.ngrams {
        Some(n) => (&n.hashes, &n.idf),
        None => (&[], &[]),
    };
    let vocab = hashes.len();
    let hash_bytes: Vec<u8> = hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
    vec![
        (
            "weights",
            Dtype::F32,
            vec![k, head.dim],
            f32_bytes(&head.weights),
        ),
        (
            "sparse_weights",
            Dtype::F32,
            vec![vocab, k],
            f32_bytes(&head.sparse_weights),
        ),
        ("bias", Dtype::F32, vec![k], f32_bytes(&head.bias)),
        (
            "center",
            Dtype::F32,
            vec![head.featurizer.center.len()],
            f32_bytes(&head.featurizer.center),
        ),
        (
            "whiten",
            Dtype::F32,
            vec![head.featurizer.whiten.len()],
            f32_bytes(&head.featurizer.whiten),
        ),
        ("ngram_hashes", Dtype::U64, vec![vocab], hash_bytes),
        ("ngram_idf", Dtype::F32, vec![vocab], f32_bytes(idf)),
        (
            "examples",
            Dtype::F32,
            vec![examples.len(), examples.dim],
            f32_bytes(&examples.rows),
        ),
        (
            "example_labels",
            Dtype::U32,
            vec![examples.labels.len()],
            examples
                .labels
                .iter()
                .flat_map(|l| l.to_le_bytes())
                .collect(),
        ),
    ]
}

fn digest(parts: &[&[u8]]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Other(e.to_string()))
}

impl TrainedHead {
    /// Writes the classifier to `path` (see the module's documentation).
    pub fn save(&self, path: &Path) -> Result<()> {
        let arrays = arrays(&self.head, &self.examples);
        let sha = digest(&arrays.iter().map(|a| a.3.as_slice()).collect::<Vec<_>>());
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("labels".to_string(), json(&self.head.labels)?),
            ("temperature".to_string(), json(&self.head.temperature)?),
            ("oos_threshold".to_string(), json(&self.threshold)?),
            (
                "nearest_threshold".to_string(),
                json(&self.nearest_threshold)?,
            ),
            ("intent_cuts".to_string(), json(&self.intent_cuts)?),
            ("report".to_string(), json(&self.report)?),
            ("config".to_string(), json(&self.config)?),
            ("sha256".to_string(), sha),
        ]);
        let views = arrays
            .iter()
            .map(|(name, dtype, shape, data)| {
                TensorView::new(*dtype, shape.clone(), data).map(|v| (*name, v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let write = || -> std::io::Result<()> {
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            tmp.write_all(&bytes)?;
            tmp.as_file().sync_all()?;
            tmp.persist(path).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|e| Error::io(path, e))
    }

    /// Reads a classifier written by [`TrainedHead::save`], checking its sizes and checksum.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Reads a classifier from the bytes [`TrainedHead::save`] writes (another replica's file);
    /// `what` names them in errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self> {
        let bad = |why: &str| Error::Other(format!("{what}: not a valid intent model ({why})"));
        if bytes.starts_with(OLD_MAGIC) {
            return Err(bad(
                "written by an older Closer in its own binary format; it is retrained from the intent set",
            ));
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(&e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(&e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad("no closer-intent-head format key"));
        }
        let field = |key: &str| meta.get(key).ok_or_else(|| bad(&format!("no `{key}`")));
        fn read<T: serde::de::DeserializeOwned>(text: &str) -> serde_json::Result<T> {
            serde_json::from_str(text)
        }
        let of = |key: &str, e: serde_json::Error| bad(&format!("`{key}`: {e}"));
        let labels: Vec<String> = read(field("labels")?).map_err(|e| of("labels", e))?;
        let temperature: f32 = read(field("temperature")?).map_err(|e| of("temperature", e))?;
        let threshold: f32 = read(field("oos_threshold")?).map_err(|e| of("oos_threshold", e))?;
        let report: TrainReport = read(field("report")?).map_err(|e| of("report", e))?;
        let config: ClassifierConfig = read(field("config")?).map_err(|e| of("config", e))?;
        let mut names = vec![
            "weights",
            "sparse_weights",
            "bias",
            "center",
            "whiten",
            "ngram_hashes",
            "ngram_idf",
        ];
        // A model written before the distance gate has no examples: it is served without one.
        if st.names().contains(&"examples") && st.names().contains(&"example_labels") {
            names.extend(["examples", "example_labels"]);
        }
        let mut data = HashMap::new();
        for &name in &names {
            let t = st.tensor(name).map_err(|e| bad(&e.to_string()))?;
            data.insert(name, (t.shape().to_vec(), t.data()));
        }
        let sha = digest(&names.iter().map(|n| data[n].1).collect::<Vec<_>>());
        if field("sha256")? != &sha {
            return Err(bad("checksum mismatch"));
        }
        let f32s = |name: &str| -> Vec<f32> {
            data[name]
                .1
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let k = labels.len();
        let dim = data["weights"].0.get(1).copied().unwrap_or(0);
        let vocab = data["ngram_hashes"].0[0];
        if data["weights"].0 != [k, dim]
            || data["sparse_weights"].0 != [vocab, k]
            || data["bias"].0 != [k]
            || data["ngram_idf"].0 != [vocab]
        {
            return Err(bad("array sizes disagree with the labels"));
        }
        let ngrams = config.head.ngrams.clone().map(|cfg| {
            let hashes = data["ngram_hashes"]
                .1
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect();
            Ngrams::from_parts(cfg, hashes, f32s("ngram_idf"))
        });
        let (examples, nearest_threshold, intent_cuts) = match data.get("examples") {
            Some((shape, _)) => {
                let (n, d) = (shape.first().copied().unwrap_or(0), shape.get(1).copied());
                let rows = f32s("examples");
                let labels: Vec<u32> = data["example_labels"]
                    .1
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                if shape.len() != 2
                    || rows.len() != n * d.unwrap_or(0)
                    || labels.len() != n
                    || labels.iter().any(|&l| l as usize >= k)
                {
                    return Err(bad("the examples' arrays have the wrong size"));
                }
                let t: f32 = match meta.get("nearest_threshold") {
                    Some(t) => read(t).map_err(|e| of("nearest_threshold", e))?,
                    None => -1.0,
                };
                let cuts: Vec<f32> = match meta.get("intent_cuts") {
                    Some(t) => read(t).map_err(|e| of("intent_cuts", e))?,
                    None => vec![],
                };
                let dim = d.unwrap_or(0);
                (Examples { dim, rows, labels }, t, cuts)
            }
            None => (Examples::default(), -1.0, vec![]),
        };
        let head = LinearHead {
            labels,
            dim,
            weights: f32s("weights"),
            sparse_weights: f32s("sparse_weights"),
            bias: f32s("bias"),
            temperature,
            featurizer: Featurizer {
                ngrams,
                center: f32s("center"),
                whiten: f32s("whiten"),
            },
        };
        Ok(Self {
            head,
            threshold,
            examples,
            nearest_threshold,
            intent_cuts,
            report,
            config,
        })
    }
}
