//! Which sentence encoder serves retrieval and intents: names, folders, pinned files, and the
//! `--intent-encoder` value (one model or a `+`-joined concatenation).

use super::pins::*;

/// Which sentence encoder: the default one serves retrieval and intents; the larger one can
/// serve intents (see README, "Intent encoder").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderModel {
    /// all-MiniLM-L6-v2: 6 layers × 384, 90 MB.
    #[default]
    MiniLm,
    /// all-mpnet-base-v2: 12 layers × 768, 438 MB; about 8× the compute per token.
    MpNet,
}

impl EncoderModel {
    pub const ALL: [EncoderModel; 2] = [EncoderModel::MiniLm, EncoderModel::MpNet];

    /// The short name taken by configuration and flags.
    pub fn key(self) -> &'static str {
        match self {
            Self::MiniLm => "minilm",
            Self::MpNet => "mpnet",
        }
    }

    /// The model's own name (part of a trained head's version).
    pub fn name(self) -> &'static str {
        match self {
            Self::MiniLm => "all-MiniLM-L6-v2",
            Self::MpNet => "all-mpnet-base-v2",
        }
    }

    pub(crate) fn dir(self) -> &'static str {
        match self {
            Self::MiniLm => ENCODER_DIR,
            Self::MpNet => MPNET_DIR,
        }
    }

    pub(crate) fn files(self) -> &'static [(&'static str, &'static str, &'static str)] {
        match self {
            Self::MiniLm => &ENCODER_FILES,
            Self::MpNet => &MPNET_FILES,
        }
    }
}

impl std::str::FromStr for EncoderModel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|m| t == m.key() || t == m.name().to_ascii_lowercase())
            .ok_or_else(|| format!("unknown encoder {s:?} (expected minilm or mpnet)"))
    }
}

impl std::fmt::Display for EncoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// What intent classifiers read: one encoder, or several side by side (`minilm+mpnet`: each
/// text's unit vectors from both, concatenated; see [`crate::concat::ConcatEmbedder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentEncoder(Vec<EncoderModel>);

impl Default for IntentEncoder {
    fn default() -> Self {
        Self(vec![EncoderModel::MiniLm])
    }
}

impl IntentEncoder {
    /// The encoders read, in order (never empty, no repeats).
    pub fn models(&self) -> &[EncoderModel] {
        &self.0
    }

    /// Whether this is the retrieval encoder alone (nothing more to load).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl From<EncoderModel> for IntentEncoder {
    fn from(m: EncoderModel) -> Self {
        Self(vec![m])
    }
}

impl std::str::FromStr for IntentEncoder {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut models = vec![];
        for part in s.split('+') {
            let m: EncoderModel = part.parse().map_err(|_| {
                format!("unknown intent encoder {s:?} (expected minilm, mpnet or minilm+mpnet)")
            })?;
            if models.contains(&m) {
                return Err(format!("intent encoder {s:?} names {m} twice"));
            }
            models.push(m);
        }
        Ok(Self(models))
    }
}

impl std::fmt::Display for IntentEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.0.iter().map(|m| m.key()).collect();
        f.write_str(&keys.join("+"))
    }
}

/// Whether the answerability judgement reads the larger encoder (all-mpnet-base-v2) beside the
/// retrieval one: `auto` where its files are pulled, `mpnet` (a missing file is an error), or
/// `off`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AnswerEncoder {
    #[default]
    Auto,
    MpNet,
    Off,
}

impl std::str::FromStr for AnswerEncoder {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "mpnet" => Ok(Self::MpNet),
            "off" | "none" => Ok(Self::Off),
            _ => Err(format!(
                "unknown answer encoder {s:?} (expected auto, mpnet or off)"
            )),
        }
    }
}
