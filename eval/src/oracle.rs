//! The evaluation's own check of a reply's claims: every amount (with its currency, magnitude and
//! period), percentage, number word, certification level, acronym or standard name, proper name,
//! e-mail and URL in the reply text must be found in what the tenant authored — fact *answers*,
//! accounts, reps, company names and the fixed lines — never in tags, a fact's own question or the
//! visitor's message. Written apart from the served guard (`closer_sales::guard`) and simpler than
//! it, so that a guard bug cannot hide itself: it shares no code with it.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;

static AMOUNT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)([$€£])?\s?(\d+(?:[.,]\d+)*)(\s?(?:%|percent\b|per\s?cent\b|k\b|m\b|bn\b|thousand\b|million\b|billion\b))?(\s?(?:dollars?|usd|euros?|eur|pounds?|gbp)\b)?",
    )
    .unwrap()
});
static LINK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)(?:https?://|www\.)[^\s"'<>()\[\],]+|[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+|\b[a-z0-9-]+(?:\.[a-z0-9-]+)+/[^\s"'<>()\[\],]*"#,
    )
    .unwrap()
});

/// A link or e-mail without scheme or trailing punctuation, lower case.
fn bare_link(l: &str) -> String {
    l.to_lowercase()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches(['.', '/', ';', ':', '!', '?'])
        .to_string()
}

static SENTENCE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[.!?](?:\s+|$)|\n").unwrap());
static LEVEL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)\btype\s+(1|2|i|ii)\b").unwrap());
static PERIOD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(month|monthly|mo|year|yearly|annually|annual|yr|week|weekly|day|daily)$")
        .unwrap()
});

static SPELLED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:[- ](two|three|four|five|six|seven|eight|nine|one))?\b|\b(two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|hundred|thousand)\b|\b(?:a|one) (third|quarter)\b|\b(half)(?: (?:off|price|the price))\b").unwrap()
});

/// Spelled numbers and fractions, with their digits.
const NUMBER_WORDS: &[(&str, &str)] = &[
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
    ("thirteen", "13"),
    ("fourteen", "14"),
    ("fifteen", "15"),
    ("sixteen", "16"),
    ("seventeen", "17"),
    ("eighteen", "18"),
    ("nineteen", "19"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("sixty", "60"),
    ("seventy", "70"),
    ("eighty", "80"),
    ("ninety", "90"),
    ("hundred", "100"),
    ("thousand", "1000"),
    ("half", "50%"),
    ("third", "33%"),
    ("quarter", "25%"),
];

fn value(word: &str) -> &'static str {
    let w = word.to_lowercase();
    NUMBER_WORDS
        .iter()
        .find(|(n, _)| *n == w)
        .map_or("", |(_, v)| *v)
}

/// The text with spelled numbers written in digits: "twenty-five" → "25", "a third" → "33%",
/// "half off" → "50% off".
fn spell_out(text: &str) -> String {
    SPELLED
        .replace_all(text, |c: &regex::Captures| {
            if let Some(t) = c.get(1) {
                let tens: u32 = value(t.as_str()).parse().unwrap_or(0);
                let units: u32 = c
                    .get(2)
                    .map_or(0, |u| value(u.as_str()).parse().unwrap_or(0));
                (tens + units).to_string()
            } else if let Some(n) = c.get(3) {
                value(n.as_str()).to_string()
            } else if let Some(f) = c.get(4) {
                value(f.as_str()).to_string()
            } else {
                let whole = c.get(0).unwrap().as_str();
                whole.replacen(c.get(5).unwrap().as_str(), "50%", 1)
            }
        })
        .into_owned()
}

/// Standards and certifications a reply may name in lower case.
const STANDARDS: &[&str] = &[
    "soc", "iso", "hipaa", "gdpr", "ccpa", "pci", "fedramp", "sox", "fips", "hitrust", "csa",
];

/// Capitalised words that are not names.
const COMMON: &[&str] = &[
    "i",
    "i'm",
    "i'll",
    "i've",
    "i'd",
    "ok",
    "yes",
    "no",
    "sure",
    "hi",
    "hello",
    "thanks",
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
    "plans",
    "plan",
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
    "utc",
    "am",
    "pm",
];

/// Nouns whose count a reply must state as a fact does ("2 months", "30 days", "5 users").
const QUANTITY_NOUNS: &[&str] = &[
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "year",
    "user",
    "seat",
    "admin",
    "employee",
    "person",
    "people",
    "store",
    "account",
    "member",
    "license",
    "contractor",
    "entity",
    "organization",
    "device",
    "transaction",
    "order",
    "product",
    "site",
];

fn canonical(num: &str) -> String {
    let mut s = num.replace(',', "");
    if let Some((i, f)) = s.split_once('.') {
        let f = f.trim_end_matches('0');
        s = if f.is_empty() {
            i.to_string()
        } else {
            format!("{i}.{f}")
        };
    }
    s
}

fn magnitude(m: &str) -> &'static str {
    let m = m.trim().to_lowercase();
    match m.as_str() {
        "" => "",
        "%" | "percent" | "per cent" | "percent." => "%",
        "k" | "thousand" => "k",
        "m" | "million" => "m",
        _ => "bn",
    }
}

fn strip(t: &str) -> &str {
    t.trim_matches(|c: char| !c.is_alphanumeric() && c != '$' && c != '€' && c != '£' && c != '%')
}

fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| {
        c.is_whitespace() || matches!(c, ',' | '"' | ';' | '|' | '[' | ']' | '{' | '}')
    })
    .map(|t| strip(t).to_lowercase())
    .filter(|t| !t.is_empty())
    .collect()
}

fn is_link(t: &str) -> bool {
    t.contains('@')
        || t.starts_with("http")
        || t.starts_with("www.")
        || (t.contains('.') && t.contains('/'))
}

/// One number in a text: `currency|number|magnitude`, the bare number, the period that follows an
/// amount (if any) and the word that follows a bare count ("30-day" → "day", "2 months" → "month").
struct Amount {
    key: String,
    num: String,
    period: Option<String>,
    noun: String,
}

fn amounts(text: &str) -> Vec<Amount> {
    let no_links: String = spell_out(text)
        .split_whitespace()
        .filter(|t| !is_link(t))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = vec![];
    for c in AMOUNT.captures_iter(&no_links) {
        let cur = match (c.get(1), c.get(4)) {
            (Some(m), _) => m.as_str().to_string(),
            (None, Some(w)) => match w.as_str().trim().to_lowercase().chars().next() {
                Some('d' | 'u') => "$".to_string(),
                Some('e') => "€".to_string(),
                _ => "£".to_string(),
            },
            (None, None) => String::new(),
        };
        let num = canonical(&c[2]);
        let mag = magnitude(c.get(3).map_or("", |m| m.as_str()));
        let end = c.get(0).unwrap().end();
        // The period: the first period word among the next eight words.
        let period = no_links[end..]
            .split_whitespace()
            .take(8)
            .map(|w| strip(w).to_lowercase())
            .find(|w| PERIOD.is_match(w))
            .map(|w| {
                if w.starts_with('m') {
                    "month"
                } else if w.starts_with('y') || w.starts_with('a') {
                    "year"
                } else if w.starts_with('w') {
                    "week"
                } else {
                    "day"
                }
                .to_string()
            });
        let period = period.filter(|_| !cur.is_empty());
        let noun = no_links[end..]
            .split_whitespace()
            .next()
            .map(|w| {
                let w = strip(w).to_lowercase();
                let w = w
                    .split('-')
                    .find(|p| !p.is_empty())
                    .unwrap_or("")
                    .to_string();
                w.strip_suffix('s').map(str::to_string).unwrap_or(w)
            })
            .unwrap_or_default();
        let noun = if no_links[end..].starts_with('-') || no_links[end..].starts_with(' ') {
            noun
        } else {
            String::new()
        };
        out.push(Amount {
            key: format!("{cur}|{num}|{mag}"),
            num,
            period,
            noun,
        });
    }
    out
}

/// What a tenant authored, ready to back claims.
#[derive(Default)]
pub struct Backing {
    words: HashSet<String>,
    links: HashSet<String>,
    amounts: HashSet<String>,
    amount_periods: HashSet<(String, Option<String>)>,
    numbers: HashSet<String>,
    counts: HashSet<(String, String)>,
    levels: HashSet<String>,
    /// Authored sentences as lower-case words, for comparisons.
    sentences: Vec<Vec<String>>,
}

/// Comparative words, as written (a few inflections listed).
const COMPARING: &[&str] = &[
    "lower", "lowers", "lowered", "higher", "cheaper", "less", "fewer", "more", "greater",
    "smaller", "larger", "bigger", "compared", "compare", "compares",
];

/// Lower-case words of four letters or more, plural "s" dropped, with their comparatives kept
/// whole, in order.
fn plain_words(sentence: &str) -> Vec<String> {
    sentence
        .split(|c: char| !c.is_alphabetic())
        .map(str::to_lowercase)
        .filter(|w| w.len() >= 4 || COMPARING.contains(&w.as_str()))
        .map(|w| {
            if COMPARING.contains(&w.as_str()) {
                w
            } else {
                w.strip_suffix('s').map(str::to_string).unwrap_or(w)
            }
        })
        .filter(|w| {
            ![
                "than", "with", "that", "this", "your", "from", "when", "they",
            ]
            .contains(&w.as_str())
        })
        .collect()
}

/// The root of a comparative ("lowers" → "lower").
fn comparing(w: &str) -> Option<&'static str> {
    match w {
        "lowers" | "lowered" => Some("lower"),
        "compared" | "compares" => Some("compare"),
        _ => COMPARING.iter().copied().find(|c| *c == w),
    }
}

fn level(l: &str) -> &'static str {
    match l.to_lowercase().as_str() {
        "1" | "i" => "1",
        _ => "2",
    }
}

impl Backing {
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut b = Backing::default();
        for t in texts {
            b.add(t);
        }
        b
    }

    pub fn add(&mut self, text: &str) {
        self.words.extend(tokens(text));
        self.sentences.extend(
            SENTENCE
                .split(text)
                .map(plain_words)
                .filter(|w| !w.is_empty()),
        );
        for m in LINK.find_iter(text) {
            self.links.insert(bare_link(m.as_str()));
        }
        for a in amounts(text) {
            self.amounts.insert(a.key.clone());
            self.counts.insert((a.num.clone(), a.noun));
            self.numbers.insert(a.num);
            self.amount_periods.insert((a.key, a.period));
        }
        for c in LEVEL.captures_iter(text) {
            self.levels.insert(level(&c[1]).to_string());
        }
    }

    /// The claims in `reply` that nothing backs, as short labels.
    pub fn unbacked(&self, reply: &str) -> Vec<String> {
        let mut out = vec![];
        for Amount {
            key,
            num,
            period,
            noun,
        } in amounts(reply)
        {
            let (cur, mag) = {
                let mut p = key.split('|');
                let c = p.next().unwrap_or("").to_string();
                p.next();
                (c, p.next().unwrap_or("").to_string())
            };
            let ok = if cur.is_empty() && mag.is_empty() {
                // A count of time or of things sold is backed with its noun: "2 months" is not
                // backed by "2 admins". Other numbers (identifiers, limits) by the number.
                self.counts.contains(&(num.clone(), noun.clone()))
                    || !QUANTITY_NOUNS.contains(&noun.as_str()) && self.numbers.contains(&num)
            } else if cur.is_empty() {
                self.amounts
                    .iter()
                    .any(|k| k.ends_with(&format!("|{num}|{mag}")))
            } else {
                self.amounts.contains(&key)
            };
            if !ok {
                out.push(format!("amount {}", key.replace('|', "")));
                continue;
            }
            if let Some(p) = period {
                let periods: Vec<&Option<String>> = self
                    .amount_periods
                    .iter()
                    .filter(|(k, _)| *k == key)
                    .map(|(_, p)| p)
                    .collect();
                if !periods
                    .iter()
                    .any(|q| q.as_deref() == Some(p.as_str()) || q.is_none())
                {
                    out.push(format!("period {} per {p}", key.replace('|', "")));
                }
            }
        }
        for c in LEVEL.captures_iter(reply) {
            if !self.levels.contains(level(&c[1])) {
                out.push(format!("level {}", &c[0]));
            }
        }
        for m in LINK.find_iter(reply) {
            let l = bare_link(m.as_str());
            if !self.links.contains(&l) {
                out.push(format!("link {l}"));
            }
        }
        for sentence in SENTENCE.split(reply) {
            out.extend(self.comparison(sentence));
            let raw: Vec<&str> = sentence.split_whitespace().collect();
            for (i, w) in raw.iter().enumerate() {
                let t = strip(w);
                let lower = t.to_lowercase();
                if t.is_empty() || is_link(&lower) {
                    continue;
                }
                if STANDARDS.contains(&lower.as_str()) {
                    if !self.words.contains(&lower) {
                        out.push(format!("standard {t}"));
                    }
                    continue;
                }
                let first = t.chars().next().unwrap_or(' ');
                if !first.is_uppercase() || COMMON.contains(&lower.as_str()) {
                    continue;
                }
                // "US$1,000" is an amount (checked as money above), not a name.
                if t.contains(['$', '€', '£']) && t.chars().any(|c| c.is_ascii_digit()) {
                    continue;
                }
                let letters: Vec<char> = t.chars().filter(|c| c.is_alphabetic()).collect();
                let acronym = letters.len() >= 2 && letters.iter().all(|c| c.is_uppercase());
                let name = lower.trim_end_matches("'s").trim_end_matches("’s");
                // A capitalised word mid-sentence, an acronym anywhere, or a sentence's first word
                // when the next is capitalised too ("Bob Smith"), or one nothing authored uses.
                let next_cap = raw
                    .get(i + 1)
                    .and_then(|n| strip(n).chars().next())
                    .is_some_and(char::is_uppercase);
                let next_verb = raw.get(i + 1).is_some_and(|n| {
                    [
                        "is", "was", "will", "can", "handles", "manages", "owns", "from", "at",
                    ]
                    .contains(&strip(n).to_lowercase().as_str())
                });
                let checked = i > 0 || acronym || next_cap || next_verb;
                // "Base's" is backed by an authored "Base" or an authored "Base's".
                if checked && !self.words.contains(name) && !self.words.contains(&lower) {
                    out.push(format!("name {t}"));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// A comparison no authored sentence makes, or makes the other way round ("monthly is
    /// cheaper than yearly" when a fact says yearly is cheaper).
    fn comparison(&self, sentence: &str) -> Option<String> {
        let words = plain_words(sentence);
        let i = words.iter().position(|w| comparing(w).is_some())?;
        let root = comparing(&words[i]);
        let (before, after) = (&words[..i], &words[i + 1..]);
        let mut made = false;
        for s in &self.sentences {
            let Some(j) = s.iter().position(|w| comparing(w) == root) else {
                continue;
            };
            made = true;
            let (fb, fa) = (&s[..j], &s[j + 1..]);
            let swapped = before.iter().any(|w| fa.contains(w) && !fb.contains(w))
                || after.iter().any(|w| fb.contains(w) && !fa.contains(w));
            if !swapped {
                return None;
            }
        }
        Some(if made {
            format!("comparison reversed: {}", sentence.trim())
        } else {
            format!("comparison {}", words[i])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applinks() -> Backing {
        Backing::new([
            "Each seat costs $80 per user per month billed monthly, or $960 per user per year billed annually.",
            "Applinks is SOC 2 Type II compliant; the audit report is shared under NDA.",
            "Chelsea Ward chelsea.ward@applinks.example",
            "Pick a time at https://applinks.example/demo.",
            "A 30-day money-back guarantee applies. Two admins are included.",
        ])
    }

    #[test]
    fn what_the_facts_say_passes() {
        let b = applinks();
        for s in [
            "Each seat costs $80 per user per month, or $960 per user per year.",
            "Applinks is SOC 2 Type II compliant.",
            "Your account owner is Chelsea Ward (chelsea.ward@applinks.example).",
            "Book a demo at Applinks.example/demo.",
            "There is a 30-day money-back guarantee.",
            "Each seat costs eighty dollars a month.",
            "Two admins are included.",
        ] {
            assert!(b.unbacked(s).is_empty(), "{s}: {:?}", b.unbacked(s));
        }
    }

    #[test]
    fn invented_or_shifted_claims_are_reported() {
        let b = applinks();
        for s in [
            "Startups get 80 percent off.",
            "A seat is $80k.",
            "A seat costs 960 euros, or €80.",
            "Startups get eighty per cent off.",
            "Each seat costs eighty-five dollars.",
            "Every admin gets a third off.",
            "You get two months free.",
            "Each seat costs $960 per user per month.",
            "Applinks is SOC 2 Type I compliant.",
            "Bob will be your account owner.",
            "We are hipaa compliant.",
            "Write to a.ward@applinks.example.",
            "Book at applinks.example/deal.",
            "Our Enterprise plan includes SSO.",
            "We give twenty-five seats free.",
        ] {
            assert!(!b.unbacked(s).is_empty(), "{s} passed");
        }
    }

    #[test]
    fn a_possessive_is_backed_by_the_authored_name() {
        let b = Backing::new([
            "Support is reached from the Knowledge Base's \"Contact us\" link.",
            "Chelsea Ward owns the account.",
        ]);
        assert!(b
            .unbacked("Use the Knowledge Base's contact link, or ask Chelsea Ward's team.")
            .is_empty());
        assert_eq!(b.unbacked("Ask the Help Center's team.").len(), 2);
    }

    #[test]
    fn a_currency_prefixed_amount_is_no_name() {
        let b = Backing::new(["Check payments need a minimum invoice of US$1,000."]);
        assert!(b
            .unbacked("Check payments need a minimum invoice of US$1,000.")
            .is_empty());
        let u = b.unbacked("Check payments need a minimum invoice of US$2,000.");
        assert!(
            u.iter().any(|x| x.starts_with("amount")) && !u.iter().any(|x| x.starts_with("name")),
            "{u:?}"
        );
    }

    #[test]
    fn a_comparison_is_read_with_its_sides() {
        let b = Backing::new([
            "Paying yearly lowers the monthly rate on every Essentials plan: Standard drops from $39 to $29 a month.",
        ]);
        assert!(b
            .unbacked("Paying yearly lowers the monthly rate.")
            .is_empty());
        assert_eq!(
            b.unbacked("Pro plans offer lower monthly rates compared to yearly plans.")
                .len(),
            1
        );
        assert_eq!(b.unbacked("Monthly plans are cheaper.").len(), 1);
    }
}
