//! Whether a retrieved fact answers a clause: a learned judgement, not a word-overlap rule.
//!
//! A logistic model over what retrieval and the encoder already measured for the (clause, fact)
//! pair — the encoder cosine and its margin over the other candidates, the BM25 score, how many
//! of the clause's content words the fact covers, how many of the uncovered words the team's whole
//! knowledge base never uses ("fedramp" asked of a tenant that never mentions it), numbers the
//! fact does not state, whether the fact is tagged with the clause's intent — trained on
//! (clause, fact) pairs of the *tuning* tenants
//! (`eval/tenants/{gusto,bitwarden,bigcommerce,pipedrive,sentry}`) with `closer-eval
//! answerability`, which also picks the threshold there. Where the larger
//! encoder (all-mpnet-base-v2) is pulled, six more features read it: the cosine of the clause with
//! the fact's question and answer, with its question alone and with the closest single sentence
//! of its answer, and each one's margin over the other candidates. The weights are
//! `answerable.json` (with those features) and `answerable-minilm.json` (without: the judgement of
//! a server that has no MPNet) beside this file; the locked tenant never sees them being chosen.

use std::collections::HashSet;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use closer_models::Embedder;

use crate::coverage::{content_terms, term_matches, terms};

/// Names of the features, in order (the weights file carries them to catch a mismatch).
pub const FEATURES: [&str; 19] = [
    "dense",
    "dense_margin",
    "bm25_share",
    "bm25_log",
    "first",
    "covered_share",
    "uncovered",
    "unknown_to_kb",
    "uncovered_numbers",
    "intent_tagged",
    "out_of_scope",
    "question",
    "length",
    "answer_encoder_fact",
    "answer_encoder_question",
    "answer_encoder_sentence",
    "answer_encoder_fact_margin",
    "answer_encoder_question_margin",
    "answer_encoder_sentence_margin",
];
/// Where the answer encoder's features start in [`FEATURES`].
pub const ANSWER_ENCODER_FEATURES: usize = 13;
pub const N: usize = FEATURES.len();

/// One retrieved fact as the judgement sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub question: &'a str,
    pub answer: &'a str,
    pub tags: &'a [String],
    pub intents: &'a [String],
    pub dense: f32,
    pub bm25: f32,
    /// The answer encoder's cosines ([`answer_cosines`]), when the server has one.
    pub answer_encoder: Option<[f32; 3]>,
}

/// The sentences of a fact's answer, as the answer encoder reads them (at most 14).
pub fn sentences(answer: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut start = 0;
    let b = answer.as_bytes();
    for i in 0..b.len() {
        if matches!(b[i], b'.' | b'!' | b'?') && b.get(i + 1).is_some_and(u8::is_ascii_whitespace) {
            out.push(answer[start..=i].trim());
            start = i + 1;
        }
    }
    out.push(answer[start..].trim());
    out.retain(|s| !s.is_empty());
    out.truncate(14);
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The answer encoder's cosines of `clause` with each fact `(question, answer)`: with the question
/// and answer together, with the question alone, and with the closest sentence of the answer.
/// One call per fact (a cached encoder remembers a fact's texts across turns).
pub fn answer_cosines(
    encoder: &dyn Embedder,
    clause: &str,
    facts: &[(&str, &str)],
) -> closer_models::Result<Vec<[f32; 3]>> {
    let q = encoder.embed(&[clause])?.pop().unwrap_or_default();
    facts
        .iter()
        .map(|(question, answer)| {
            let whole = format!("{question} {answer}");
            let mut texts = vec![whole.as_str(), question];
            texts.extend(sentences(answer));
            let v = encoder.embed(&texts)?;
            let best = v[2..]
                .iter()
                .map(|s| dot(&q, s))
                .fold(f32::NEG_INFINITY, f32::max);
            Ok([
                dot(&q, &v[0]),
                dot(&q, &v[1]),
                if best.is_finite() { best } else { 0.0 },
            ])
        })
        .collect()
}

/// The clause being judged.
#[derive(Debug, Clone, Copy)]
pub struct Clause<'a> {
    pub text: &'a str,
    /// The intent the classifier gave it.
    pub intent: &'a str,
    /// Classified out of scope.
    pub out_of_scope: bool,
}

/// Every word the tenant's facts use (questions, answers, tags), and the words of its own names
/// ("gusto" in "does gusto do X" is covered by every fact).
#[derive(Debug, Default)]
pub struct Vocabulary {
    words: HashSet<String>,
    names: HashSet<String>,
}

impl Vocabulary {
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        Vocabulary {
            words: texts.into_iter().flat_map(terms).collect(),
            names: HashSet::new(),
        }
    }

    /// A tenant's vocabulary: its facts' questions, answers and tags, and its names.
    pub fn of_facts<'a>(
        facts: &'a [closer_kb::Fact],
        names: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Vocabulary::new(facts.iter().flat_map(|f| {
            [f.question.as_str(), f.answer.as_str()]
                .into_iter()
                .chain(f.tags.iter().map(String::as_str))
        }))
        .with_names(names)
    }

    /// Adds the tenant's company and product names.
    #[must_use]
    pub fn with_names<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        self.names.extend(names.into_iter().flat_map(terms));
        self
    }

    fn knows(&self, term: &str) -> bool {
        self.words.contains(term) || self.words.iter().any(|f| term_matches(term, f))
    }
}

/// The features of candidate `i` for `clause`.
pub fn features(
    clause: Clause<'_>,
    cands: &[Candidate<'_>],
    i: usize,
    vocab: &Vocabulary,
) -> [f32; N] {
    let c = cands[i];
    let other_dense = cands
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, o)| o.dense)
        .fold(f32::NEG_INFINITY, f32::max);
    let margin = if other_dense.is_finite() {
        c.dense - other_dense
    } else {
        0.0
    };
    let max_bm25 = cands.iter().map(|o| o.bm25).fold(0f32, f32::max);
    let evidence: Vec<String> = terms(&format!(
        "{} {} {} {}",
        c.question,
        c.answer,
        c.tags.join(" "),
        c.intents.join(" ")
    ));
    let content = content_terms(clause.text);
    let uncovered: Vec<&String> = content
        .iter()
        .filter(|q| !vocab.names.contains(*q) && !evidence.iter().any(|f| term_matches(q, f)))
        .collect();
    let unknown = uncovered.iter().filter(|q| !vocab.knows(q)).count();
    let numbers = uncovered
        .iter()
        .filter(|q| q.chars().any(|ch| ch.is_ascii_digit()))
        .count();
    let n = content.len();
    let mut deep = [0f32; 6];
    if let Some(a) = c.answer_encoder {
        for d in 0..3 {
            let other = cands
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .filter_map(|(_, o)| o.answer_encoder.map(|x| x[d]))
                .fold(f32::NEG_INFINITY, f32::max);
            deep[d] = a[d];
            deep[3 + d] = if other.is_finite() { a[d] - other } else { 0.0 };
        }
    }
    [
        c.dense,
        margin,
        if max_bm25 > 0.0 {
            c.bm25 / max_bm25
        } else {
            0.0
        },
        (1.0 + c.bm25.max(0.0)).ln() / 3.0,
        f32::from(u8::from(i == 0)),
        if n == 0 {
            0.0
        } else {
            1.0 - uncovered.len() as f32 / n as f32
        },
        uncovered.len().min(4) as f32 / 4.0,
        unknown.min(3) as f32 / 3.0,
        numbers.min(2) as f32 / 2.0,
        f32::from(u8::from(c.intents.iter().any(|x| x == clause.intent))),
        f32::from(u8::from(clause.out_of_scope)),
        f32::from(u8::from(crate::coverage::is_question(clause.text))),
        n.min(12) as f32 / 12.0,
        deep[0],
        deep[1],
        deep[2],
        deep[3],
        deep[4],
        deep[5],
    ]
}

/// How sure the judgement is that a fact answers the clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// `p ≥ threshold`: the reply answers from the fact.
    Yes,
    /// `hedge ≤ p < threshold`: the fact is the closest the team wrote; the reply states it in the
    /// team's own words (nothing generated) and offers a rep to confirm.
    Closest,
}

/// The trained model: `p = σ(bias + Σ wᵢ·xᵢ)`; a fact answers the clause when `p ≥ threshold`,
/// and is offered as the closest documented answer, with a rep, when `p ≥ hedge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Judge {
    pub features: Vec<String>,
    pub weights: Vec<f32>,
    pub bias: f32,
    pub threshold: f32,
    pub hedge: f32,
    /// Where the weights came from (tenants, date, command), for the record.
    #[serde(default)]
    pub trained_on: String,
}

fn shipped(json: &str, name: &str) -> Judge {
    let j: Judge = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("{name} is valid (checked by a test): {e}"));
    assert_eq!(j.features, FEATURES, "{name} was trained on other features");
    j
}

static WITH_ANSWER_ENCODER: LazyLock<Judge> =
    LazyLock::new(|| shipped(include_str!("answerable.json"), "answerable.json"));
static MINILM_ONLY: LazyLock<Judge> = LazyLock::new(|| {
    shipped(
        include_str!("answerable-minilm.json"),
        "answerable-minilm.json",
    )
});

impl Judge {
    /// The weights shipped with Closer: those that read the answer encoder's features, or those
    /// of a server without one.
    pub fn builtin(answer_encoder: bool) -> &'static Judge {
        if answer_encoder {
            &WITH_ANSWER_ENCODER
        } else {
            &MINILM_ONLY
        }
    }

    pub fn probability(&self, x: &[f32; N]) -> f32 {
        let z = self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f32>();
        1.0 / (1.0 + (-z).exp())
    }

    /// The candidates that answer `clause`, best first, at most `n`: the sure ones when the best
    /// is sure, else those reaching the hedge: (index, p, how sure).
    pub fn pick(
        &self,
        clause: Clause<'_>,
        cands: &[Candidate<'_>],
        vocab: &Vocabulary,
        n: usize,
    ) -> Vec<(usize, f32, Answers)> {
        let mut scored: Vec<(usize, f32)> = (0..cands.len())
            .map(|i| (i, self.probability(&features(clause, cands, i, vocab))))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        // When the best is sure, only other sure ones join it: a sure answer is not diluted with
        // a hedge (and a hand-off) for a fact the visitor did not need.
        let floor = match scored.first() {
            Some(&(_, p)) if p >= self.threshold => self.threshold,
            _ => self.hedge,
        };
        scored
            .into_iter()
            .take(n)
            .filter(|&(_, p)| p >= floor)
            .filter_map(|(i, p)| self.band(p).map(|a| (i, p, a)))
            .collect()
    }

    /// What a probability means for the reply.
    pub fn band(&self, p: f32) -> Option<Answers> {
        if p >= self.threshold {
            Some(Answers::Yes)
        } else if p >= self.hedge {
            Some(Answers::Closest)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat<'a>(tags: &'a [String], intents: &'a [String], dense: f32) -> Candidate<'a> {
        Candidate {
            question: "How much does each seat cost?",
            answer: "Each seat costs $80 per user per month billed monthly, or $960 per user per year billed annually.",
            tags,
            intents,
            dense,
            bm25: 6.0,
            answer_encoder: None,
        }
    }

    #[test]
    fn the_shipped_weights_load_and_match_the_features() {
        for with in [true, false] {
            let j = Judge::builtin(with);
            assert_eq!(j.weights.len(), N);
            assert!(j.threshold > 0.0 && j.threshold < 1.0);
            assert!(j.hedge <= j.threshold);
        }
        // A server without the answer encoder reads weights that never look at its features.
        assert!(Judge::builtin(false).weights[ANSWER_ENCODER_FEATURES..]
            .iter()
            .all(|w| *w == 0.0));
        assert!(Judge::builtin(true).weights[ANSWER_ENCODER_FEATURES..]
            .iter()
            .any(|w| *w != 0.0));
    }

    #[test]
    fn an_answer_splits_into_sentences_at_stops_followed_by_space() {
        assert_eq!(
            sentences("Plans cost $6.50 a month. Is it free? No! Ask v2.1 support"),
            vec![
                "Plans cost $6.50 a month.",
                "Is it free?",
                "No!",
                "Ask v2.1 support"
            ]
        );
        assert_eq!(sentences("  "), Vec::<&str>::new());
    }

    #[test]
    fn the_answer_encoder_features_read_each_candidates_margin() {
        let vocab = Vocabulary::new(["seat price"]);
        let mut a = seat(&[], &[], 0.5);
        a.answer_encoder = Some([0.8, 0.6, 0.9]);
        let mut b = seat(&[], &[], 0.4);
        b.answer_encoder = Some([0.5, 0.7, 0.4]);
        let clause = Clause {
            text: "seat price?",
            intent: "pricing",
            out_of_scope: false,
        };
        let x = features(clause, &[a, b], 0, &vocab);
        let k = ANSWER_ENCODER_FEATURES;
        assert_eq!(&x[k..k + 3], &[0.8, 0.6, 0.9]);
        assert!((x[k + 3] - 0.3).abs() < 1e-6);
        assert!((x[k + 4] + 0.1).abs() < 1e-6);
        assert!((x[k + 5] - 0.5).abs() < 1e-6);
        let none = features(clause, &[seat(&[], &[], 0.5)], 0, &vocab);
        assert!(none[k..].iter().all(|v| *v == 0.0));
    }

    #[test]
    fn features_read_coverage_and_words_the_team_never_uses() {
        let tags = vec!["price".to_string()];
        let intents = vec!["pricing".to_string()];
        let vocab = Vocabulary::new([
            "Each seat costs $80 per user per month. Applinks is SOC 2 Type II compliant.",
        ]);
        let cands = [seat(&tags, &intents, 0.7)];
        let asked = Clause {
            text: "how much is a seat?",
            intent: "pricing",
            out_of_scope: false,
        };
        let x = features(asked, &cands, 0, &vocab);
        assert_eq!(x[5], 1.0, "every content word covered");
        assert_eq!(x[7], 0.0);
        assert_eq!(x[9], 1.0, "tagged with the clause's intent");
        let fedramp = Clause {
            text: "are you fedramp authorized?",
            intent: "security",
            out_of_scope: false,
        };
        let y = features(fedramp, &cands, 0, &vocab);
        assert!(y[7] > 0.0, "fedramp appears nowhere in the facts");
        assert_eq!(y[9], 0.0);
    }

    #[test]
    fn the_judge_answers_the_seed_question_and_not_the_startup_discount() {
        let j = Judge::builtin(false);
        let tags = vec!["price".to_string(), "cost".to_string(), "seat".to_string()];
        let intents = vec!["pricing".to_string()];
        let vocab = Vocabulary::new([
            "How much does each seat cost? Each seat costs $80 per user per month billed monthly, or $960 per user per year billed annually.",
            "Is Applinks SOC 2 compliant? Applinks is SOC 2 Type II compliant.",
        ]);
        // As retrieval hands them over: three candidates, the seat price well ahead.
        let soc = Candidate {
            question: "Is Applinks SOC 2 compliant?",
            answer: "Applinks is SOC 2 Type II compliant.",
            tags: &[],
            intents: &[],
            dense: 0.2,
            bm25: 0.5,
            answer_encoder: None,
        };
        let cands = [seat(&tags, &intents, 0.75), soc, soc];
        let seed = Clause {
            text: "How much does each seat cost?",
            intent: "pricing",
            out_of_scope: false,
        };
        assert_eq!(j.pick(seed, &cands, &vocab, 1)[0].2, Answers::Yes);
        let cands = [seat(&tags, &intents, 0.45), soc, soc];
        let discount = Clause {
            text: "Do you offer a 50% discount for startups?",
            intent: "pricing",
            out_of_scope: false,
        };
        assert!(j
            .pick(discount, &cands, &vocab, 1)
            .iter()
            .all(|x| x.2 != Answers::Yes));
    }
}
