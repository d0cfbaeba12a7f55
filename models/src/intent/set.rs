//! A tenant's intent set (`intents.yaml` or JSON lines): intents, their flags and examples.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The intent a message gets when nothing fits.
pub const OUT_OF_SCOPE: &str = "out_of_scope";

/// What the server does with an intent, declared per intent in the tenant's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentFlag {
    /// Answered from the knowledge base's facts.
    Knowledge,
    /// Answered from the accounts table: the visitor's company domain → its owner rep.
    AccountOwner,
    /// The visitor wants a person: raise a hand-off.
    Handoff,
    /// Shows buying intent (used by CQL scoring).
    BuyingSignal,
    /// Suggests the visitor is not a lead (student, competitor, job seeker).
    Disqualify,
}

/// One intent of a tenant's set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub flags: Vec<IntentFlag>,
    pub examples: Vec<String>,
}

/// A tenant's intent set, as written in its `intents.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentSet {
    pub intents: Vec<IntentDef>,
}

impl IntentSet {
    /// Parses and validates YAML; errors name the line or the intent and field.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let set: IntentSet = serde_norway::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("line {}, column {}: ", l.line(), l.column()));
            Error::IntentSet(format!("{}{e}", at.unwrap_or_default()))
        })?;
        set.validate()?;
        Ok(set)
    }

    pub fn validate(&self) -> Result<()> {
        if self.intents.len() < 2 {
            return Err(Error::IntentSet(
                "`intents` needs at least two intents".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (i, def) in self.intents.iter().enumerate() {
            let valid = !def.name.is_empty()
                && def.name.len() <= 64
                && def
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(Error::IntentSet(format!(
                    "intents[{i}].name {:?}: use 1-64 lowercase letters, digits or '_'",
                    def.name
                )));
            }
            if !seen.insert(def.name.as_str()) {
                return Err(Error::IntentSet(format!(
                    "intents[{i}].name {:?} is defined twice",
                    def.name
                )));
            }
            if def.examples.len() < 2 {
                return Err(Error::IntentSet(format!(
                    "intents[{i}] ({}).examples: at least 2 examples are needed, found {}",
                    def.name,
                    def.examples.len()
                )));
            }
            if let Some(j) = def.examples.iter().position(|e| e.trim().is_empty()) {
                return Err(Error::IntentSet(format!(
                    "intents[{i}] ({}).examples[{j}] is empty",
                    def.name
                )));
            }
        }
        Ok(())
    }

    /// Parses JSON lines: `{"text": "...", "intent": "..."}` rows (the datasets' format), and
    /// optional `{"intent": "...", "description": "...", "flags": [...]}` rows that declare an
    /// intent's metadata. Intents keep the order of their first appearance. Errors name the line
    /// and field.
    pub fn from_jsonl(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Line {
            intent: Option<String>,
            text: Option<String>,
            description: Option<String>,
            flags: Option<Vec<IntentFlag>>,
        }
        let mut set = IntentSet { intents: vec![] };
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let line: Line = serde_json::from_str(raw)
                .map_err(|e| Error::IntentSet(format!("line {n}, column {}: {e}", e.column())))?;
            let name = line
                .intent
                .ok_or_else(|| Error::IntentSet(format!("line {n}: field `intent` is missing")))?;
            let at = match set.intents.iter().position(|d| d.name == name) {
                Some(at) => at,
                None => {
                    set.intents.push(IntentDef {
                        name: name.clone(),
                        description: String::new(),
                        flags: vec![],
                        examples: vec![],
                    });
                    set.intents.len() - 1
                }
            };
            let def = &mut set.intents[at];
            match (line.text, line.description.is_some() || line.flags.is_some()) {
                (Some(t), false) => {
                    if t.trim().is_empty() {
                        return Err(Error::IntentSet(format!("line {n}: field `text` is empty")));
                    }
                    def.examples.push(t);
                }
                (None, true) => {
                    if let Some(d) = line.description {
                        def.description = d;
                    }
                    if let Some(f) = line.flags {
                        def.flags = f;
                    }
                }
                (Some(_), true) => {
                    return Err(Error::IntentSet(format!(
                        "line {n}: a line is either an example (`text`) or a declaration (`description`, `flags`), not both"
                    )))
                }
                (None, false) => return Err(Error::IntentSet(format!("line {n}: field `text` is missing"))),
            }
        }
        set.validate()?;
        Ok(set)
    }

    /// The set as YAML, in the documented format.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_default()
    }

    pub fn get(&self, name: &str) -> Option<&IntentDef> {
        self.intents.iter().find(|d| d.name == name)
    }

    pub fn has_flag(&self, name: &str, flag: IntentFlag) -> bool {
        self.get(name).is_some_and(|d| d.flags.contains(&flag))
    }
}
