//! Comparisons: "yearly plans cost less than monthly ones" states an order, and a sentence that
//! uses the facts' words the other way round ("monthly plans cost less than yearly ones") has
//! every word backed and says the opposite. A comparison must be one the facts make, with what
//! stands before and after its word on the same sides.

use std::collections::HashSet;

use crate::coverage::{content_terms, term_matches, terms};

/// Words that compare two things ("lowers", "cheapest" are read as their root).
const COMPARATIVES: &[&str] = &[
    "lower", "higher", "cheaper", "less", "fewer", "more", "greater", "smaller", "larger",
    "bigger", "faster", "slower", "better", "worse", "compare",
];

/// One comparison in a sentence: its word, and the content words before and after it.
#[derive(Debug, Clone)]
pub(super) struct Comparison {
    pub word: &'static str,
    before: HashSet<String>,
    after: HashSet<String>,
}

fn comparative(w: &str) -> Option<&'static str> {
    COMPARATIVES
        .iter()
        .copied()
        .find(|c| w == *c || (w.starts_with(c) && w.len() <= c.len() + 2))
}

fn content(words: &[String]) -> HashSet<String> {
    content_terms(&words.join(" "))
        .into_iter()
        .filter(|t| comparative(t).is_none() && !t.chars().all(|c| c.is_ascii_digit()))
        .collect()
}

/// The comparisons a sentence makes.
pub(super) fn comparisons(sentence: &str) -> Vec<Comparison> {
    let words = terms(sentence);
    words
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            Some(Comparison {
                word: comparative(w)?,
                before: content(&words[..i]),
                after: content(&words[i + 1..]),
            })
        })
        .collect()
}

impl Comparison {
    /// True when a word this comparison puts on one side stands only on the other side of the
    /// fact's comparison.
    pub fn reverses(&self, fact: &Comparison) -> bool {
        let has = |set: &HashSet<String>, t: &str| set.iter().any(|f| term_matches(t, f));
        self.before
            .iter()
            .any(|t| has(&fact.after, t) && !has(&fact.before, t))
            || self
                .after
                .iter()
                .any(|t| has(&fact.before, t) && !has(&fact.after, t))
    }
}
