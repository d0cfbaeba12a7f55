//! The fact guard: a generated sentence reaches the visitor only when every number, amount,
//! percentage, certification or standard name, proper name, email and URL in it is found in the
//! facts the answer cites. This is code, not a prompt instruction: the 0.5B generator invents
//! prices, discounts and arithmetic freely.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;

static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(?:https?://|www\.)[^\s<>()\[\]]+").unwrap());
static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+\b").unwrap());
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"([$€£¥])?\s?(\d+(?:[.,]\d+)*)\s?(%|percent\b)?").unwrap());
static WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{L}][\p{L}\p{N}'’-]*|\p{N}+").unwrap());

/// Number words a model may use instead of digits, with their values.
const NUMBER_WORDS: [(&str, &str); 28] = [
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("fifteen", "15"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("sixty", "60"),
    ("hundred", "100"),
    ("thousand", "1000"),
    ("million", "1000000"),
    ("half", "50%"),
    ("quarter", "25%"),
    ("double", "2"),
    ("twice", "2"),
    ("dozen", "12"),
    ("fourteen", "14"),
];

/// Capitalised words that are not proper names wherever they stand.
const COMMON_CAPITALISED: [&str; 62] = [
    "I",
    "I'm",
    "I'll",
    "I've",
    "I'd",
    "OK",
    "Yes",
    "No",
    "Sure",
    "Hi",
    "Hello",
    "Thanks",
    "The",
    "A",
    "An",
    "Our",
    "Your",
    "We",
    "You",
    "It",
    "This",
    "That",
    "These",
    "Those",
    "Each",
    "Every",
    "For",
    "With",
    "In",
    "On",
    "At",
    "If",
    "And",
    "But",
    "Or",
    "So",
    "Also",
    "All",
    "Any",
    "There",
    "Please",
    "Great",
    "Absolutely",
    "Unfortunately",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
];

/// A statement a sentence makes that must be backed by a fact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Claim {
    Url(String),
    Email(String),
    /// A number in canonical form ("960", "9.5"), with its currency or percent sign if any.
    Number {
        value: String,
        unit: Option<String>,
    },
    /// A spelled-out number ("fifty") or fraction ("half").
    NumberWord(String),
    /// An all-capitals token such as SOC, ISO, HIPAA, II.
    Acronym(String),
    /// A capitalised word that is not at the start of the sentence (or starts a multi-word name).
    ProperName(String),
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Url(s)
            | Claim::Email(s)
            | Claim::NumberWord(s)
            | Claim::Acronym(s)
            | Claim::ProperName(s) => {
                write!(f, "{s}")
            }
            Claim::Number { value, unit } => write!(f, "{}{value}", unit.as_deref().unwrap_or("")),
        }
    }
}

fn canonical_number(raw: &str) -> String {
    let mut s = raw.replace(',', "");
    if let Some((int, frac)) = s.split_once('.') {
        let frac = frac.trim_end_matches('0');
        s = if frac.is_empty() {
            int.to_string()
        } else {
            format!("{int}.{frac}")
        };
    }
    let t = s.trim_start_matches('0');
    if t.is_empty() || t.starts_with('.') {
        format!("0{t}")
    } else {
        t.to_string()
    }
}

fn number_claims(text: &str, out: &mut Vec<Claim>) {
    // URLs and emails carry digits that are checked as part of them.
    let stripped = EMAIL
        .replace_all(&URL.replace_all(text, " "), " ")
        .into_owned();
    for c in NUMBER.captures_iter(&stripped) {
        let value = canonical_number(&c[2]);
        let unit = c
            .get(1)
            .map(|m| m.as_str().to_string())
            .or_else(|| c.get(3).map(|_| "%".to_string()));
        out.push(Claim::Number { value, unit });
    }
}

/// Every claim in `sentence`.
pub fn claims(sentence: &str) -> Vec<Claim> {
    let mut out = vec![];
    for m in URL.find_iter(sentence) {
        out.push(Claim::Url(
            m.as_str()
                .trim_end_matches(['.', ',', ';', ':', '!', '?'])
                .to_lowercase(),
        ));
    }
    for m in EMAIL.find_iter(sentence) {
        out.push(Claim::Email(m.as_str().to_lowercase()));
    }
    number_claims(sentence, &mut out);
    let without_links = EMAIL
        .replace_all(&URL.replace_all(sentence, " "), " ")
        .into_owned();
    let words: Vec<&str> = WORD.find_iter(&without_links).map(|m| m.as_str()).collect();
    for (i, w) in words.iter().enumerate() {
        let lower = w.to_lowercase();
        if let Some((word, _)) = NUMBER_WORDS.iter().find(|(n, _)| *n == lower) {
            out.push(Claim::NumberWord((*word).to_string()));
            continue;
        }
        let first = w.chars().next().unwrap_or(' ');
        if !first.is_uppercase() || COMMON_CAPITALISED.contains(w) {
            continue;
        }
        let letters: Vec<char> = w.chars().filter(|c| c.is_alphabetic()).collect();
        if letters.len() >= 2 && letters.iter().all(|c| c.is_uppercase()) {
            out.push(Claim::Acronym(w.to_string()));
            continue;
        }
        let next_capitalised = words
            .get(i + 1)
            .and_then(|n| n.chars().next())
            .is_some_and(char::is_uppercase);
        if i > 0 || next_capitalised {
            out.push(Claim::ProperName(strip_possessive(w).to_string()));
        }
    }
    out
}

/// "Applinks's" and "Applinks’" → "Applinks".
fn strip_possessive(w: &str) -> &str {
    w.strip_suffix("'s")
        .or_else(|| w.strip_suffix("’s"))
        .or_else(|| w.strip_suffix('\''))
        .or_else(|| w.strip_suffix('’'))
        .unwrap_or(w)
}

/// What the cited facts say, prepared for fast claim checks.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    lower: String,
    words: HashSet<String>,
    numbers: HashSet<(String, Option<String>)>,
    bare_numbers: HashSet<String>,
}

impl Evidence {
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut e = Evidence::default();
        for t in texts {
            e.add(t);
        }
        e
    }

    pub fn add(&mut self, text: &str) {
        self.lower.push('\n');
        self.lower.push_str(&text.to_lowercase());
        for m in WORD.find_iter(text) {
            self.words
                .insert(strip_possessive(&m.as_str().to_lowercase()).to_string());
        }
        let mut nums = vec![];
        number_claims(text, &mut nums);
        for c in nums {
            if let Claim::Number { value, unit } = c {
                self.bare_numbers.insert(value.clone());
                self.numbers.insert((value, unit));
            }
        }
    }

    /// True when the facts back the claim.
    pub fn supports(&self, claim: &Claim) -> bool {
        match claim {
            Claim::Url(u) => self.lower.contains(
                u.trim_start_matches("https://")
                    .trim_start_matches("http://"),
            ),
            Claim::Email(e) => self.lower.contains(e.as_str()),
            Claim::Number {
                value,
                unit: Some(u),
            } => {
                // "$80" needs "$80" in a fact; "50%" needs "50%" (or "50 percent").
                self.numbers.contains(&(value.clone(), Some(u.clone())))
            }
            Claim::Number { value, unit: None } => {
                self.bare_numbers.contains(value)
                    || NUMBER_WORDS
                        .iter()
                        .any(|(w, v)| v == value && self.words.contains(*w))
            }
            Claim::NumberWord(w) => {
                self.words.contains(w)
                    || NUMBER_WORDS
                        .iter()
                        .find(|(n, _)| n == w)
                        .is_some_and(|(_, v)| !v.ends_with('%') && self.bare_numbers.contains(*v))
            }
            Claim::Acronym(a) | Claim::ProperName(a) => self.words.contains(&a.to_lowercase()),
        }
    }

    /// The claims of `sentence` that no fact backs (empty: the sentence may be released).
    pub fn unsupported(&self, sentence: &str) -> Vec<Claim> {
        claims(sentence)
            .into_iter()
            .filter(|c| !self.supports(c))
            .collect()
    }
}

/// Cuts streamed text into sentences: a sentence ends at `.`, `!` or `?` followed by whitespace,
/// or at a line break. What is left at the end of the stream is the last sentence.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buf: String,
}

impl SentenceSplitter {
    /// Adds text; returns the sentences it completed.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buf.push_str(text);
        let mut out = vec![];
        loop {
            let bytes = self.buf.as_bytes();
            let mut cut = None;
            for i in 0..bytes.len() {
                let c = bytes[i];
                if c == b'\n' {
                    cut = Some(i + 1);
                    break;
                }
                if matches!(c, b'.' | b'!' | b'?')
                    && i + 1 < bytes.len()
                    && bytes[i + 1].is_ascii_whitespace()
                {
                    cut = Some(i + 1);
                    break;
                }
            }
            match cut {
                Some(at) => {
                    let s: String = self.buf.drain(..at).collect();
                    if !s.trim().is_empty() {
                        out.push(s.trim().to_string());
                    }
                }
                None => break,
            }
        }
        out
    }

    /// The unfinished sentence, if any.
    pub fn finish(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.buf);
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat_evidence() -> Evidence {
        Evidence::new([
            "Each seat costs $80 per user per month billed monthly, or $960 per user per year billed annually.",
            "Applinks is SOC 2 Type II compliant; the audit report is shared under NDA.",
            "Chelsea Ward is the account owner for acme.com (Acme Corporation).",
            "Applinks",
        ])
    }

    #[test]
    fn grounded_sentences_pass() {
        let e = seat_evidence();
        for s in [
            "Each seat costs $80 per user per month billed monthly, or $960.00 per user per year billed annually.",
            "Applinks is SOC 2 Type II compliant.",
            "Chelsea Ward is the account owner for acme.com.",
            "Your rep would be Chelsea Ward.",
        ] {
            assert!(e.unsupported(s).is_empty(), "{s}: {:?}", e.unsupported(s));
        }
    }

    #[test]
    fn invented_prices_discounts_and_arithmetic_are_caught() {
        let e = seat_evidence();
        let cases = [
            (
                "Yes, Applinks offers a 50% discount for startups.",
                Claim::Number {
                    value: "50".into(),
                    unit: Some("%".into()),
                },
            ),
            (
                "10 users would cost $800 per month.",
                Claim::Number {
                    value: "800".into(),
                    unit: Some("$".into()),
                },
            ),
            (
                "Each seat costs €80 per month.",
                Claim::Number {
                    value: "80".into(),
                    unit: Some("€".into()),
                },
            ),
            (
                "We are also ISO 27001 certified.",
                Claim::Acronym("ISO".into()),
            ),
            ("Your rep is Bob Smith.", Claim::ProperName("Bob".into())),
            (
                "Contact sales@evil.example for a deal.",
                Claim::Email("sales@evil.example".into()),
            ),
            (
                "See https://evil.example/deal for details.",
                Claim::Url("https://evil.example/deal".into()),
            ),
            ("Startups get half off.", Claim::NumberWord("half".into())),
        ];
        for (s, want) in cases {
            let bad = e.unsupported(s);
            assert!(bad.contains(&want), "{s}: expected {want:?} in {bad:?}");
        }
    }

    #[test]
    fn splitter_keeps_amounts_and_releases_whole_sentences() {
        let mut sp = SentenceSplitter::default();
        let mut got = vec![];
        for piece in [
            "Each seat ",
            "costs $9",
            ".50 a month",
            ". Applinks is ",
            "SOC 2 compliant",
            ".",
        ] {
            got.extend(sp.push(piece));
        }
        got.extend(sp.finish());
        assert_eq!(
            got,
            [
                "Each seat costs $9.50 a month.",
                "Applinks is SOC 2 compliant."
            ]
        );
    }
}
