//! The fact guard: a generated sentence reaches the visitor only when every claim in it is backed
//! by what the team authored for this answer — the cited facts' *answers*, the accounts and reps
//! tables, the company's names — never by tags, a fact's own question or the visitor's words.
//!
//! Checked per sentence ([`Evidence::unsupported`]):
//! - typed claims ([`claims`]): money with currency, magnitude and period ("$960 per user per
//!   month" needs $960 *per month* in a fact); percentages in every spelling; counts and durations
//!   with the word that follows them ("2 months free" is not backed by "2 admins"); number words;
//!   SOC levels ("SOC 2 Type I" is not backed by "SOC 2 Type II"); standards in any case; names
//!   anywhere in a sentence; e-mails, URLs and domains as whole tokens;
//! - polarity: the fact sentence closest to the generated one must say yes where it says yes and
//!   no (not, only, cannot…) where it says no;
//! - comparisons ([`compare`]): "lower", "cheaper", "more"… must be a comparison a fact makes,
//!   with the same things on the same sides of it;
//! - prose: the sentence's content words must be the facts' words (one in three may be new,
//!   none of them taken from the visitor's message: [`Evidence::asked`]); steps and
//!   capabilities the facts do not state fail here.
//!
//! This is code, not a prompt instruction: the 0.5B generator invents prices, discounts,
//! arithmetic and "yes" answers freely. A failing sentence gives way to the fact's own answer.

mod claims;
mod compare;
mod split;

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;

pub use claims::{claims, spell_out, Claim};
pub use split::SentenceSplitter;

use crate::coverage::{content_terms, term_matches};

static SENTENCE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[.!?;](?:\s+|$)|\n").unwrap());

/// Where a sentence's clauses part, for the polarity check.
static CLAUSE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[;:]|,?\s+(?:but|while|whereas|although|however)\s+").unwrap());

/// Words that change what a sentence promises (periods, scope, price): each must be a word of
/// the cited facts.
const CRITICAL: &[&str] = &[
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "year",
    "years",
    "hour",
    "hours",
    "minute",
    "minutes",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "annually",
    "annual",
    "free",
    "unlimited",
    "discount",
    "discounts",
    "refund",
    "refunds",
    "refundable",
    "lifetime",
    "guarantee",
    "guaranteed",
    "included",
    "includes",
    "always",
    "every",
    "all",
    "any",
    "cheaper",
    "cheapest",
    "lowest",
    "highest",
    // Bounds: "a maximum of 30 seats" where the fact says the price drops above 30.
    "maximum",
    "minimum",
    "max",
    "least",
    "limit",
    "limits",
    "limited",
    "cap",
    "capped",
    "ceiling",
];

/// Words that make a sentence say no. ("Only" restricts: a sentence saying it needs a fact that
/// restricts too.)
const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "cannot",
    "can't",
    "cant",
    "don't",
    "doesn't",
    "isn't",
    "aren't",
    "won't",
    "wasn't",
    "weren't",
    "hasn't",
    "haven't",
    "didn't",
    "unsupported",
    "unavailable",
    "none",
    "neither",
    "nor",
    "without",
    "excluded",
    "excludes",
    "lacks",
];

/// A fact sentence as the polarity check reads it.
#[derive(Debug, Clone)]
struct FactSentence {
    terms: HashSet<String>,
    negative: usize,
    only: bool,
}

fn only(sentence: &str) -> bool {
    sentence
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w == "only" || w == "just" || w == "exclusively")
}

/// How many times a sentence says no ("cannot pay X, cannot be used with Y" says it twice).
fn negative(sentence: &str) -> usize {
    let lower = sentence.to_lowercase().replace('’', "'");
    lower
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| NEGATIONS.contains(w) || w.ends_with("n't"))
        .count()
}

/// What the cited facts say, prepared for claim checks.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    claims: HashSet<Claim>,
    /// Money without its period, for claims that state none.
    money: HashSet<(String, String)>,
    /// Each number with the words that follow it (three, hyphens split).
    counts: HashMap<String, HashSet<String>>,
    words: HashSet<String>,
    sentences: Vec<FactSentence>,
    comparisons: Vec<compare::Comparison>,
    /// The visitor's content words ([`Evidence::asked`]): never evidence.
    asked: Vec<String>,
}

impl Evidence {
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut e = Evidence::default();
        for t in texts {
            e.add(t);
        }
        e
    }

    /// Registers what the visitor wrote. Their words back nothing, and a word no fact uses that
    /// the generator took from them is their premise restated as the team's ("There is a
    /// totally free version…" asked "is there a totally free version"): such a sentence fails,
    /// without the one-in-three allowance other new words get.
    pub fn asked(&mut self, text: &str) {
        self.asked.extend(content_terms(&spell_out(text)));
    }

    /// Adds an authored text (a fact's answer, an account line, a name).
    pub fn add(&mut self, text: &str) {
        for sentence in SENTENCE.split(text) {
            if sentence.trim().is_empty() {
                continue;
            }
            for c in claims(sentence) {
                match &c {
                    Claim::Money {
                        currency, value, ..
                    } => {
                        self.money.insert((currency.clone(), value.clone()));
                    }
                    Claim::Url(u) => {
                        let host = u.split('/').next().unwrap_or("").to_string();
                        self.claims.insert(Claim::Domain(host));
                    }
                    Claim::Email(e) => {
                        let host = e.rsplit('@').next().unwrap_or("").to_string();
                        self.claims.insert(Claim::Domain(host));
                    }
                    Claim::Level { standard, .. } => {
                        self.claims.insert(Claim::Level {
                            standard: standard.clone(),
                            level: None,
                        });
                    }
                    _ => {}
                }
                self.claims.insert(c);
            }
            let spelled = spell_out(sentence);
            for (c, end) in claims::numbers(&spelled) {
                let value = match c {
                    Claim::Count { value, .. } => value,
                    Claim::Money { value, .. } | Claim::Percent(value) => value,
                    _ => continue,
                };
                let next = claims::following(&spelled, end, 5);
                let periods: Vec<String> = next
                    .iter()
                    .filter_map(|w| claims::period_of(w))
                    .map(|p| format!("per {p}"))
                    .collect();
                let e = self.counts.entry(value).or_default();
                e.extend(next.into_iter().take(3));
                e.extend(periods);
            }
            for w in sentence
                .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\'' || c == '’'))
                .filter(|w| !w.is_empty())
            {
                let w = w.to_lowercase();
                let w = w
                    .trim_end_matches("'s")
                    .trim_end_matches("’s")
                    .trim_matches(['\'', '’', '-']);
                self.words.insert(w.to_string());
                for part in w.split('-') {
                    self.words.insert(part.to_string());
                }
            }
            self.comparisons.extend(compare::comparisons(sentence));
            self.sentences.push(FactSentence {
                terms: content_terms(sentence).into_iter().collect(),
                negative: negative(sentence),
                only: only(sentence),
            });
        }
    }

    /// True when the facts back the claim.
    pub fn supports(&self, claim: &Claim) -> bool {
        match claim {
            Claim::Money {
                currency,
                value,
                period: None,
            } => self.money.contains(&(currency.clone(), value.clone())),
            Claim::Count {
                value,
                noun,
                period,
            } => self.counts.get(value).is_some_and(|next| {
                noun.as_ref().is_none_or(|n| next.contains(n))
                    && period
                        .as_ref()
                        .is_none_or(|p| next.contains(&format!("per {p}")))
            }),
            Claim::Name(w) | Claim::Acronym(w) | Claim::Standard(w) => self.words.contains(w),
            Claim::Polarity(_) | Claim::Prose(_) => false,
            c => self.claims.contains(c),
        }
    }

    /// The fact sentences sharing the most content words with `terms`: at least two, or the one
    /// word a short clause has ("…; it can be reserved" is read against "it cannot be
    /// reserved").
    fn closest(&self, terms: &[String]) -> Vec<&FactSentence> {
        let shared = |s: &FactSentence| {
            terms
                .iter()
                .filter(|t| s.terms.iter().any(|f| term_matches(t, f)))
                .count()
        };
        let best = self.sentences.iter().map(shared).max().unwrap_or(0);
        if best < terms.len().clamp(1, 2) {
            return vec![];
        }
        self.sentences
            .iter()
            .filter(|s| shared(s) == best)
            .collect()
    }

    /// The claims of `sentence` that no fact backs (empty: the sentence may be released).
    pub fn unsupported(&self, sentence: &str) -> Vec<Claim> {
        let mut bad: Vec<Claim> = claims(sentence)
            .into_iter()
            .filter(|c| !self.supports(c))
            .collect();
        let terms: Vec<String> = content_terms(&spell_out(sentence))
            .into_iter()
            .filter(|t| !t.chars().all(|c| c.is_ascii_digit()))
            .collect();
        // Polarity per clause: "X is not accepted; Y is" holds two.
        let yes = sentence.trim_start().to_lowercase().starts_with("yes");
        for piece in CLAUSE.split(sentence).filter(|p| !p.trim().is_empty()) {
            let piece_terms: Vec<String> = content_terms(&spell_out(piece))
                .into_iter()
                .filter(|t| !t.chars().all(|c| c.is_ascii_digit()))
                .collect();
            let closest = self.closest(&piece_terms);
            let neg = negative(piece);
            let restricts = only(piece);
            let agrees = |s: &&FactSentence| {
                s.negative == neg
                    && !(yes && s.negative > 0)
                    && (!restricts || s.only || s.negative > 0)
            };
            if !closest.is_empty() && !closest.iter().any(agrees) {
                bad.push(Claim::Polarity(format!(
                    "{} ({})",
                    if neg > 0 { "says no" } else { "says yes" },
                    piece.trim()
                )));
            }
        }
        for c in compare::comparisons(sentence) {
            let made: Vec<&compare::Comparison> = self
                .comparisons
                .iter()
                .filter(|f| f.word == c.word)
                .collect();
            if made.is_empty() {
                bad.push(Claim::Prose(format!(
                    "{} (a comparison no fact makes)",
                    c.word
                )));
            } else if made.iter().all(|f| c.reverses(f)) {
                bad.push(Claim::Polarity(format!(
                    "compares the other way round ({})",
                    sentence.trim()
                )));
            }
        }
        // Words that change what a sentence promises must be the facts' words too.
        for t in &terms {
            if CRITICAL.contains(&t.as_str()) && !self.words.contains(t.as_str()) {
                bad.push(Claim::Prose(t.clone()));
            }
        }
        let new: Vec<&String> = terms
            .iter()
            .filter(|t| !self.words.iter().any(|w| term_matches(t, w)))
            .collect();
        if new.len() >= 2 && new.len() * 3 > terms.len() {
            bad.push(Claim::Prose(
                new.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
            ));
        }
        for t in new {
            if self.asked.iter().any(|a| term_matches(t, a)) {
                bad.push(Claim::Prose(format!(
                    "{t} (the visitor's word, in no fact)"
                )));
            }
        }
        bad
    }
}

#[cfg(test)]
mod tests;
