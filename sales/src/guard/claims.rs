//! Typed claims read from one sentence: money with currency, magnitude and period; percentages in
//! every spelling; counts and durations with the words that follow them; number words;
//! certifications with their level; standards in any case; names anywhere in a sentence;
//! e-mails, URLs and domains as whole tokens.

use std::sync::LazyLock;

use regex::{Captures, Regex};

static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(?:https?://|www\.)[^\s<>()\[\]]+").unwrap());
static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+\b").unwrap());
static DOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:com|net|org|io|co|ai|app|dev|example|us|uk|de|eu|gov|edu|info|biz)\b").unwrap()
});
static AMOUNT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)([$€£¥])?\s?(\d+(?:,\d{3})*(?:\.\d+)?)(\s?(?:%|k\b|m\b|bn\b|thousand\b|million\b|billion\b))?(\s?(?:dollars?|usd|euros?|eur|pounds?|gbp)\b)?",
    )
    .unwrap()
});
static LEVEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\bsoc\s?-?\s?(1|2|3|iii|ii|i)\b(?:\s*,?\s*type\s+(1|2|ii|i)\b)?").unwrap()
});
static SPELLED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)\b(twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:[- ](one|two|three|four|five|six|seven|eight|nine))?\b",
        r"|\b(two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|hundred|thousand|dozen)\b",
        r"|\b(?:a|one)[- ](third|quarter)\b",
        r"|\b(half)\b",
        r"|\b(one)\s+(day|week|month|year|hour|minute|user|seat|store|admin|account|person|employee)s?\b",
        r"|\bper\s?cent\b|\bpercent\b",
    ))
    .unwrap()
});
static WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{L}][\p{L}\p{N}'’&-]*|\p{N}+").unwrap());

const UNITS: &[(&str, u64)] = &[
    ("one", 1),
    ("two", 2),
    ("three", 3),
    ("four", 4),
    ("five", 5),
    ("six", 6),
    ("seven", 7),
    ("eight", 8),
    ("nine", 9),
    ("ten", 10),
    ("eleven", 11),
    ("twelve", 12),
    ("thirteen", 13),
    ("fourteen", 14),
    ("fifteen", 15),
    ("sixteen", 16),
    ("seventeen", 17),
    ("eighteen", 18),
    ("nineteen", 19),
    ("twenty", 20),
    ("thirty", 30),
    ("forty", 40),
    ("fifty", 50),
    ("sixty", 60),
    ("seventy", 70),
    ("eighty", 80),
    ("ninety", 90),
    ("hundred", 100),
    ("thousand", 1000),
    ("dozen", 12),
];

fn unit_value(w: &str) -> u64 {
    let w = w.to_lowercase();
    UNITS.iter().find(|(n, _)| *n == w).map_or(0, |(_, v)| *v)
}

/// Standards and certifications, recognised in any case.
pub const STANDARDS: &[&str] = &[
    "soc",
    "iso",
    "hipaa",
    "gdpr",
    "ccpa",
    "cpra",
    "pci",
    "pci-dss",
    "dss",
    "fedramp",
    "sox",
    "fips",
    "hitrust",
    "csa",
    "nist",
    "cmmc",
    "irap",
    "tisax",
    "ferpa",
    "coppa",
    "glba",
    "vpat",
    "wcag",
    "ens",
    "c5",
    "hds",
    "pipeda",
    "lgpd",
    "appi",
    "tx-ramp",
    "stateramp",
    "cjis",
    "itar",
    "hecvat",
    "eidas",
];

/// Capitalised words that are not names wherever they stand.
pub const COMMON: &[&str] = &[
    "i",
    "i'm",
    "i'll",
    "i've",
    "i'd",
    "ok",
    "okay",
    "yes",
    "no",
    "sure",
    "hi",
    "hello",
    "hey",
    "thanks",
    "thank",
    "the",
    "a",
    "an",
    "our",
    "your",
    "we",
    "you",
    "it",
    "this",
    "that",
    "these",
    "those",
    "each",
    "every",
    "for",
    "with",
    "in",
    "on",
    "at",
    "if",
    "and",
    "but",
    "or",
    "so",
    "also",
    "all",
    "any",
    "there",
    "please",
    "great",
    "absolutely",
    "unfortunately",
    "however",
    "currently",
    "here",
    "what",
    "when",
    "would",
    "could",
    "can",
    "to",
    "as",
    "not",
    "only",
    "they",
    "their",
    "its",
    "by",
    "from",
    "after",
    "before",
    "both",
    "either",
    "neither",
    "most",
    "some",
    "many",
    "several",
    "none",
    "even",
    "because",
    "since",
    "while",
    "although",
    "though",
    "there's",
    "it's",
    "that's",
    "here's",
    "let",
    "let's",
    "feel",
    "welcome",
    "today",
    "well",
    "instead",
    "additionally",
    "otherwise",
    "simply",
    "just",
    "then",
    "first",
    "next",
    "finally",
    "once",
    "note",
    "yes,",
    "got",
    "select",
    "choose",
    "click",
    "go",
    "open",
    "log",
    "sign",
    "visit",
    "contact",
    "call",
    "submit",
    "use",
    "pay",
    "paying",
    "payments",
    "billing",
    "customers",
    "users",
    "employees",
    "new",
    "existing",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "am",
    "pm",
    "per",
    "how",
    "who",
    "where",
    "which",
    "why",
    "do",
    "does",
    "did",
    "is",
    "are",
    "was",
    "will",
    "should",
    "my",
    "me",
    "us",
    "he",
    "she",
    "his",
    "her",
    "them",
    "there",
    "yet",
    "up",
    "out",
    "about",
    "into",
    "over",
    "under",
    "between",
    "without",
    "within",
    "during",
    "than",
    "more",
    "less",
    "other",
    "another",
    "such",
    "same",
    "just",
    "again",
    "always",
    "never",
    "usually",
    "typically",
    "generally",
    "specifically",
    "depending",
    "based",
    "regarding",
    "whether",
    "see",
    "learn",
    "find",
    "check",
    "read",
    "ask",
    "tell",
    "keep",
    "make",
    "get",
    "set",
    "add",
    "remove",
    "turn",
    "enable",
    "disable",
    "connect",
    "import",
    "export",
    "cancel",
    "upgrade",
    "downgrade",
    "start",
    "stop",
    "try",
    "need",
    "want",
    "like",
    "know",
    "think",
    "yours",
    "ours",
    "own",
    "everyone",
    "anyone",
    "someone",
];

/// A statement a sentence makes that must be backed by a fact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Claim {
    Url(String),
    Email(String),
    Domain(String),
    /// An amount of money: currency, value (magnitude applied: "$80k" is 80000), and the period
    /// that follows it ("per month" → "month"), if any.
    Money {
        currency: String,
        value: String,
        period: Option<String>,
    },
    /// A percentage, however spelled ("80%", "80 per cent", "eighty percent", "half off").
    Percent(String),
    /// A number with the word that follows it ("30-day" → day, "2 months" → month), if any,
    /// and the period that follows it ("1,000 invoices a year" → year), if any.
    Count {
        value: String,
        noun: Option<String>,
        period: Option<String>,
    },
    /// A certification with its level: ("soc 2", Some("1")) for "SOC 2 Type I".
    Level {
        standard: String,
        level: Option<String>,
    },
    /// A standard named in any case ("hipaa").
    Standard(String),
    /// An all-capitals token such as ISO, SSO, II.
    Acronym(String),
    /// A capitalised word that names someone or something.
    Name(String),
    /// The sentence says yes where the matching fact says no, or the reverse.
    Polarity(String),
    /// Content words no cited fact uses (prose the facts do not entail).
    Prose(String),
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Url(s)
            | Claim::Email(s)
            | Claim::Domain(s)
            | Claim::Percent(s)
            | Claim::Standard(s)
            | Claim::Acronym(s)
            | Claim::Name(s) => {
                if matches!(self, Claim::Percent(_)) {
                    write!(f, "{s}%")
                } else {
                    write!(f, "{s}")
                }
            }
            Claim::Money {
                currency,
                value,
                period,
            } => match period {
                Some(p) => write!(f, "{currency}{value} per {p}"),
                None => write!(f, "{currency}{value}"),
            },
            Claim::Count {
                value,
                noun,
                period,
            } => {
                write!(f, "{value}")?;
                if let Some(n) = noun {
                    write!(f, " {n}")?;
                }
                match period {
                    Some(p) => write!(f, " per {p}"),
                    None => Ok(()),
                }
            }
            Claim::Level { standard, level } => match level {
                Some(l) => write!(f, "{standard} type {l}"),
                None => write!(f, "{standard}"),
            },
            Claim::Polarity(s) => write!(f, "polarity: {s}"),
            Claim::Prose(s) => write!(f, "not in the facts: {s}"),
        }
    }
}

/// Spelled numbers written in digits and every spelling of "percent" as `%`: "twenty-five" →
/// "25", "a third" → "33%", "half" → "50%", "one month" → "1 month", "80 per cent" → "80%".
pub fn spell_out(text: &str) -> String {
    SPELLED
        .replace_all(text, |c: &Captures| {
            if let Some(t) = c.get(1) {
                let units = c.get(2).map_or(0, |u| unit_value(u.as_str()));
                (unit_value(t.as_str()) + units).to_string()
            } else if let Some(n) = c.get(3) {
                unit_value(n.as_str()).to_string()
            } else if let Some(f) = c.get(4) {
                if f.as_str().eq_ignore_ascii_case("third") {
                    "33%".into()
                } else {
                    "25%".into()
                }
            } else if c.get(5).is_some() {
                "50%".into()
            } else if let Some(u) = c.get(7) {
                format!("1 {}", u.as_str())
            } else {
                "%".into()
            }
        })
        .into_owned()
        .replace(" %", "%")
}

/// "9.50" → "9.5", "1,000" → "1000", "007" → "7".
pub fn canonical_number(raw: &str) -> String {
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

fn scaled(value: &str, magnitude: &str) -> String {
    let factor: f64 = match magnitude {
        "k" | "thousand" => 1e3,
        "m" | "million" => 1e6,
        "bn" | "billion" => 1e9,
        _ => return value.to_string(),
    };
    let v: f64 = value.parse().unwrap_or(0.0) * factor;
    canonical_number(&format!("{v:.2}"))
}

pub fn period_of(word: &str) -> Option<&'static str> {
    let w = word.to_lowercase();
    let w = w.trim_matches(|c: char| !c.is_alphanumeric());
    Some(match w {
        "month" | "months" | "monthly" | "mo" => "month",
        "year" | "years" | "yearly" | "annually" | "annual" | "yr" => "year",
        "week" | "weeks" | "weekly" => "week",
        "day" | "days" | "daily" => "day",
        "hour" | "hours" | "hourly" | "hr" => "hour",
        _ => return None,
    })
}

/// Singular, lower case: "months" → "month", "seats" → "seat".
pub fn singular(w: &str) -> String {
    let w = w.to_lowercase();
    let w = w.trim_matches(|c: char| !c.is_alphanumeric());
    if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") {
        w[..w.len() - 1].to_string()
    } else {
        w.to_string()
    }
}

/// The words that follow position `end` (a number's end), split at hyphens: "-day money-back" →
/// ["day", "money", "back"].
pub fn following(text: &str, end: usize, n: usize) -> Vec<String> {
    text[end..]
        .split(|c: char| c.is_whitespace() || c == '-' || c == '/')
        .map(singular)
        .filter(|w| !w.is_empty())
        .take(n)
        .collect()
}

/// Removes URLs and e-mails (checked whole) from a text.
fn without_links(text: &str) -> String {
    EMAIL
        .replace_all(&URL.replace_all(text, " "), " ")
        .into_owned()
}

/// Every number in `text` (links removed, numbers spelled out): the claim, and where it ends.
pub fn numbers(text: &str) -> Vec<(Claim, usize)> {
    let mut out = vec![];
    for c in AMOUNT.captures_iter(text) {
        let whole = c.get(0).unwrap();
        let num = c.get(2).unwrap();
        // Digits inside an identifier ("PBKDF2", "X25519", "AES256") are part of that name.
        if text[..num.start()]
            .chars()
            .next_back()
            .is_some_and(|p| p.is_alphabetic())
        {
            continue;
        }
        let value = canonical_number(num.as_str());
        let magnitude = c
            .get(3)
            .map(|m| m.as_str().trim().to_lowercase())
            .unwrap_or_default();
        let currency = match (c.get(1), c.get(4)) {
            (Some(m), _) => Some(m.as_str().to_string()),
            (None, Some(w)) => Some(
                match w.as_str().trim().to_lowercase().chars().next() {
                    Some('d' | 'u') => "$",
                    Some('e') => "€",
                    _ => "£",
                }
                .to_string(),
            ),
            (None, None) => None,
        };
        let end = whole.end();
        let claim = if magnitude == "%" {
            Claim::Percent(value)
        } else if let Some(currency) = currency {
            let period = text[end..]
                .split_whitespace()
                .take(8)
                .find_map(period_of)
                .map(str::to_string);
            Claim::Money {
                currency,
                value: scaled(&value, &magnitude),
                period,
            }
        } else {
            let value = scaled(&value, &magnitude);
            // "8am": the letters glued to the number are its word.
            let glued: String = text[end..]
                .chars()
                .take_while(|c| c.is_alphabetic())
                .collect();
            let noun = if glued.is_empty() {
                following(text, end, 1).into_iter().next()
            } else {
                Some(glued.to_lowercase())
            };
            let noun = noun.filter(|n| n.chars().all(char::is_alphabetic) && n.len() > 1);
            // The period of a count ("invoices a year"), unless the count is itself a duration.
            let period = following(text, end, 4)
                .iter()
                .skip(usize::from(
                    noun.as_deref().is_some_and(|n| period_of(n).is_some()),
                ))
                .find_map(|w| period_of(w))
                .map(str::to_string);
            Claim::Count {
                value,
                noun,
                period,
            }
        };
        out.push((claim, end));
    }
    out
}

fn strip_possessive(w: &str) -> &str {
    w.strip_suffix("'s")
        .or_else(|| w.strip_suffix("’s"))
        .or_else(|| w.strip_suffix('\''))
        .or_else(|| w.strip_suffix('’'))
        .unwrap_or(w)
}

fn roman(l: &str) -> String {
    match l.to_lowercase().as_str() {
        "i" | "1" => "1",
        "ii" | "2" => "2",
        _ => "3",
    }
    .to_string()
}

/// Every claim in `sentence`.
pub fn claims(sentence: &str) -> Vec<Claim> {
    let mut out = vec![];
    for m in URL.find_iter(sentence) {
        out.push(Claim::Url(normal_url(m.as_str())));
    }
    for m in EMAIL.find_iter(sentence) {
        out.push(Claim::Email(m.as_str().to_lowercase()));
    }
    let text = without_links(sentence);
    for m in DOMAIN.find_iter(&text) {
        out.push(Claim::Domain(m.as_str().to_lowercase()));
    }
    let text = spell_out(&DOMAIN.replace_all(&text, " "));
    for c in LEVEL.captures_iter(&text) {
        out.push(Claim::Level {
            standard: format!("soc {}", roman(&c[1])),
            level: c.get(2).map(|l| roman(l.as_str())),
        });
    }
    out.extend(numbers(&text).into_iter().map(|(c, _)| c));
    let words: Vec<&str> = WORD.find_iter(&text).map(|m| m.as_str()).collect();
    for w in &words {
        let w = strip_possessive(w);
        let lower = w.to_lowercase();
        if STANDARDS.contains(&lower.as_str()) {
            out.push(Claim::Standard(lower));
            continue;
        }
        let first = w.chars().next().unwrap_or(' ');
        if !first.is_uppercase() || COMMON.contains(&lower.as_str()) {
            continue;
        }
        let letters: Vec<char> = w.chars().filter(|c| c.is_alphabetic()).collect();
        if letters.len() >= 2 && letters.iter().all(|c| c.is_uppercase()) {
            out.push(Claim::Acronym(lower));
            continue;
        }
        // Anywhere in the sentence, first word included ("Bob will…", "Pipedrive serves…"):
        // a capitalised word that is not a common word is a name to back.
        out.push(Claim::Name(lower));
    }
    out
}

/// A URL without scheme, `www.`, trailing punctuation or slash, lower case.
pub fn normal_url(u: &str) -> String {
    let u = u
        .trim_end_matches(['.', ',', ';', ':', '!', '?', ')'])
        .to_lowercase();
    let u = u
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_start_matches("www.");
    u.trim_end_matches('/').to_string()
}
