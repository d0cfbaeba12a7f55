//! Words of a visitor's text as the answerability judgement and the guard read them: content
//! words (question framing and filler removed), matching that allows inflections and one-letter
//! typos ("integrate"/"integrations", "seet"/"seat"), which content words of a question a text
//! does not contain, and whether a clause asks something at all.

use std::collections::HashSet;

const STOPWORDS: &[&str] = &[
    // Pieces of contractions.
    "d",
    "ll",
    "m",
    "re",
    "t",
    "ve",
    "don",
    "doesn",
    "isn",
    "aren",
    "won",
    "didn",
    "wouldn",
    "couldn",
    // Verbs and words that frame a question rather than carry its topic.
    "able",
    "find",
    "go",
    "long",
    "look",
    "looking",
    "make",
    "see",
    "show",
    "take",
    "u",
    "use",
    "using",
    "a",
    "about",
    "actually",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "anything",
    "are",
    "as",
    "at",
    "be",
    "been",
    "being",
    "but",
    "by",
    "can",
    "could",
    "currently",
    "did",
    "do",
    "does",
    "each",
    "etc",
    "ever",
    "for",
    "from",
    "get",
    "give",
    "got",
    "had",
    "has",
    "have",
    "hello",
    "hey",
    "hi",
    "how",
    "i",
    "if",
    "in",
    "info",
    "information",
    "is",
    "it",
    "its",
    "just",
    "know",
    "let",
    "like",
    "many",
    "may",
    "me",
    "more",
    "much",
    "my",
    "need",
    "no",
    "not",
    "now",
    "of",
    "offer",
    "ok",
    "on",
    "one",
    "or",
    "our",
    "ours",
    "out",
    "please",
    "provide",
    "question",
    "really",
    "s",
    "should",
    "so",
    "some",
    "something",
    "still",
    "tell",
    "than",
    "thanks",
    "that",
    "the",
    "their",
    "them",
    "there",
    "these",
    "they",
    "this",
    "those",
    "to",
    "too",
    "up",
    "us",
    "very",
    "want",
    "was",
    "we",
    "were",
    "what",
    "whats",
    "when",
    "where",
    "which",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "yes",
    "you",
    "your",
    "yours",
    "guys",
    "folks",
    "wondering",
    "curious",
    "quick",
    "re",
    "ve",
    "ll",
    "d",
    "m",
    "t",
    "there's",
    "it's",
    "i'm",
    "we're",
    "you're",
];

/// Lower-cased content words of a text, stopwords removed.
pub fn content_terms(text: &str) -> Vec<String> {
    let stop: HashSet<&str> = STOPWORDS.iter().copied().collect();
    terms(text)
        .into_iter()
        .filter(|t| !stop.contains(t.as_str()))
        .collect()
}

/// Lower-cased words; apostrophes split contractions ("what's" → "what", "s"), whose pieces are
/// stopwords.
pub fn terms(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

fn within_one_edit(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let (mut i, mut j, mut edits) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            i += 1;
            j += 1;
            continue;
        }
        edits += 1;
        if edits > 1 {
            return false;
        }
        match a.len().cmp(&b.len()) {
            std::cmp::Ordering::Greater => i += 1,
            std::cmp::Ordering::Less => j += 1,
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    edits + (a.len() - i) + (b.len() - j) <= 1
}

/// Same word up to inflection ("integrate"/"integrations", "seat"/"seats") or one typo.
pub fn term_matches(q: &str, f: &str) -> bool {
    if q == f {
        return true;
    }
    let (ql, fl) = (q.chars().count(), f.chars().count());
    let shorter = ql.min(fl);
    let p = common_prefix(q, f);
    if shorter >= 4 && p >= 4 && (p as f32) >= 0.75 * shorter as f32 {
        return true;
    }
    // Digits must match exactly: "50" is not a typo of "30".
    shorter >= 4 && !q.chars().any(|c| c.is_ascii_digit()) && within_one_edit(q, f)
}

/// The question's content words that the evidence does not contain.
pub fn uncovered_terms(question: &str, evidence: &str) -> Vec<String> {
    let ev: Vec<String> = terms(evidence);
    content_terms(question)
        .into_iter()
        .filter(|q| !ev.iter().any(|f| term_matches(q, f)))
        .collect()
}

/// A clause that asks something: it has a `?`, one of its parts (cut at punctuation) opens with a
/// question word, or it uses a wh-word anywhere ("hq where").
pub fn is_question(clause: &str) -> bool {
    const OPENERS: &[&str] = &[
        "what", "whats", "how", "is", "are", "do", "does", "can", "could", "will", "would",
        "which", "who", "when", "where", "why", "should", "any", "got", "r", "u", "hw",
    ];
    const WH: &[&str] = &[
        "what", "whats", "how", "where", "when", "which", "who", "why",
    ];
    let t = clause.trim();
    let lower = t.to_lowercase();
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    // "what's" opens as "what" does ("I'm" stays one word for `inverted`).
    fn stem(w: &str) -> &str {
        w.split('\'').next().unwrap_or(w)
    }
    t.contains('?')
        || lower
            .split(['.', ',', ';', ':', '!', '-', '–', '—', '\n'])
            .any(|part| {
                words(part)
                    .first()
                    .is_some_and(|w| OPENERS.contains(&stem(w)))
            })
        || words(&lower).iter().any(|w| WH.contains(&stem(w)))
        || inverted(&words(&lower))
}

/// The questions of one clause, when the classifier gave several one intent: "whats enterprise
/// cost on annual and do u have soc 2" → "whats enterprise cost on annual", "do u have soc 2";
/// "next day deposits? also is there a 401k" → two. A clause splits after a question mark, and
/// before "and" / "also" / "&" followed by a word that opens a question; a part of fewer than
/// two words, or without a topic word of its own ("how long?"), stays with the one before. One part (the clause itself) when nothing splits.
pub fn questions(clause: &str) -> Vec<&str> {
    const OPENERS: &[&str] = &[
        "what", "whats", "how", "is", "are", "do", "does", "can", "could", "will", "would",
        "which", "who", "when", "where", "why", "any", "u", "r",
    ];
    let lower = clause.to_ascii_lowercase();
    let words: Vec<(usize, &str)> = lower
        .split_ascii_whitespace()
        .map(|w| (w.as_ptr() as usize - lower.as_ptr() as usize, w))
        .collect();
    let mut cuts = vec![];
    for (k, &(at, w)) in words.iter().enumerate() {
        let bare = w.trim_matches(|c: char| !c.is_alphanumeric() && c != '&');
        let next = words
            .get(k + 1)
            .map(|(_, n)| n.trim_matches(|c: char| !c.is_alphanumeric()));
        let after_question = k > 0 && words[k - 1].1.ends_with('?');
        let joins_a_question =
            JOINERS.contains(&bare) && next.is_some_and(|n| OPENERS.contains(&n));
        if k > 0 && (after_question || joins_a_question) {
            cuts.push(at);
        }
    }
    // Ranges of the parts; one that is not a question of its own ("legal wants data kept in
    // canada", "flat fee or per head"), has fewer than two words, or has no topic word of its
    // own ("how long?", "where do i find it": it asks about the one before) joins the one
    // before.
    let mut ranges: Vec<(usize, usize)> = vec![];
    let mut start = 0;
    for cut in cuts.into_iter().chain(std::iter::once(clause.len())) {
        let part = without_joiner(clause[start..cut].trim());
        let words = part
            .split_whitespace()
            .filter(|w| !JOINERS.contains(&w.to_ascii_lowercase().as_str()))
            .count();
        match ranges.last_mut() {
            Some(last) if words < 2 || !is_question(part) || content_terms(part).is_empty() => {
                last.1 = cut
            }
            _ => ranges.push((start, cut)),
        }
        start = cut;
    }
    if ranges.len() <= 1 {
        return vec![clause.trim()];
    }
    ranges
        .iter()
        .enumerate()
        .map(|(k, &(a, b))| {
            let part = clause[a..b].trim();
            // A joiner leads the part it opens ("and do u have soc 2"): dropped.
            if k > 0 {
                without_joiner(part)
            } else {
                part
            }
        })
        .collect()
}

/// Words that join two questions ("… and do you …").
const JOINERS: &[&str] = &["and", "also", "&"];

/// `part` without a leading joiner.
fn without_joiner(part: &str) -> &str {
    JOINERS
        .iter()
        .find_map(|j| {
            part.get(..j.len() + 1)
                .filter(|p| p.eq_ignore_ascii_case(&format!("{j} ")))
                .map(|_| part[j.len() + 1..].trim_start())
        })
        .unwrap_or(part)
}

/// An auxiliary before its subject anywhere in the clause: "if we bail after 2 weeks *can we*
/// get our money back", "so *do you* take amex".
fn inverted(words: &[String]) -> bool {
    const AUX: &[&str] = &[
        "can", "could", "do", "does", "did", "is", "are", "will", "would", "should", "may",
    ];
    const SUBJECTS: &[&str] = &[
        "i", "we", "you", "u", "they", "there", "my", "our", "your", "ur",
    ];
    words.windows(2).any(|w| {
        AUX.contains(&w[0].as_str())
            && SUBJECTS.contains(&w[1].as_str())
            // "… as we do our payroll" is not a question.
            && !(w[0].starts_with("do") && matches!(w[1].as_str(), "my" | "our" | "your" | "ur"))
    })
}

/// Chat shorthand written out, for retrieval and the answerability judgement: "u" → "you",
/// "ppl" → "people", "thru" → "through"… (the visitor's own text is kept for everything else).
pub fn spelled_out(text: &str) -> String {
    const SHORTHAND: &[(&str, &str)] = &[
        ("u", "you"),
        ("ur", "your"),
        ("r", "are"),
        ("ppl", "people"),
        ("thru", "through"),
        ("w", "with"),
        ("w/o", "without"),
        ("b/c", "because"),
        ("bc", "because"),
        ("pls", "please"),
        ("plz", "please"),
        ("biz", "business"),
        ("hq", "headquarters"),
        ("yr", "year"),
        ("yrs", "years"),
        ("mo", "month"),
        ("mos", "months"),
        ("mgmt", "management"),
        ("acct", "account"),
        ("info", "information"),
        ("rn", "right now"),
        ("asap", "as soon as possible"),
        ("approx", "approximately"),
        ("diff", "different"),
        ("emp", "employee"),
        ("emps", "employees"),
        ("cust", "customer"),
        ("int'l", "international"),
        ("intl", "international"),
        ("2fa", "two-factor authentication"),
        ("mfa", "multi-factor authentication"),
    ];
    let mut out = String::with_capacity(text.len() + 16);
    for (i, token) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let core = token.trim_matches(|c: char| !c.is_alphanumeric() && c != '/' && c != '\'');
        let lower = core.to_lowercase();
        match SHORTHAND.iter().find(|(s, _)| *s == lower) {
            Some((_, long)) if !core.is_empty() => out.push_str(&token.replacen(core, long, 1)),
            _ => out.push_str(token),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEAT: &str = "How much does each seat cost? Each seat costs $80 per user per month. price, pricing, cost, seat";

    #[test]
    fn a_clause_of_several_questions_splits_into_them() {
        assert_eq!(
            questions("whats enterprise cost on annual and do u have soc 2"),
            vec!["whats enterprise cost on annual", "do u have soc 2"]
        );
        assert_eq!(
            questions("do you do next day deposits? also is there a 401k"),
            vec!["do you do next day deposits?", "is there a 401k"]
        );
        assert_eq!(
            questions("plus w/ yearly billing - what does it run? and do the reminder emails come with it"),
            vec!["plus w/ yearly billing - what does it run?", "do the reminder emails come with it"]
        );
        // One question: the clause itself.
        for one in [
            "do you integrate with salesforce and hubspot",
            "How much does each seat cost?",
            "pricing? ",
            "what does it cost and why",
            "pricing? soc2?",
            "do u have a canadian data center? legal wants data kept in canada",
            "hey whats the damage for like 15 ppl? flat fee or per head",
            "free trial?? how long",
            "can we try it without a card? for how long?",
            "the api keeps asking for a token?? where do i find it",
        ] {
            assert_eq!(questions(one), vec![one.trim()], "{one}");
        }
    }

    #[test]
    fn a_question_after_a_condition_is_a_question() {
        assert!(is_question(
            "if we bail after 2 weeks can we get our money back"
        ));
        assert!(is_question("so do you take amex"));
        assert!(!is_question(
            "we are 300 people and want to buy this quarter"
        ));
        assert!(!is_question("thanks, we do our payroll in house"));
        assert!(!is_question("great, running it by my CFO"));
        // A contraction opens a question as its first word does (calendly, a tuning tenant:
        // "what's the api rate limit per minute" was answered as a statement).
        assert!(is_question("what's the api rate limit per minute"));
        assert!(is_question("who's the ceo these days"));
        assert!(is_question("ok and how's billing handled for contractors"));
        assert!(!is_question("I'm a freelancer, it's just me"));
    }

    #[test]
    fn seed_questions_are_covered() {
        assert!(uncovered_terms("How much does each seat cost?", SEAT).is_empty());
        assert!(
            uncovered_terms("How much does each seet cost?", SEAT).is_empty(),
            "one-letter typo"
        );
        assert!(uncovered_terms(
            "Are you SOC II compliant?",
            "Is Applinks SOC 2 compliant? Applinks is SOC 2 Type II compliant. soc ii, compliance"
        )
        .is_empty());
    }

    #[test]
    fn discount_question_is_not_covered_by_seat_price() {
        let missing = uncovered_terms("Do you offer a 50% discount for startups?", SEAT);
        assert_eq!(missing, ["50", "discount", "startups"]);
    }

    #[test]
    fn chat_shorthand_is_written_out() {
        assert_eq!(
            spelled_out("where r u guys based? we're 15 ppl, w/o an hq"),
            "where are you guys based? we're 15 people, without an headquarters"
        );
        assert_eq!(spelled_out("Unicode ü stays"), "Unicode ü stays");
    }

    #[test]
    fn matching_rules() {
        assert!(term_matches("integrate", "integrations"));
        assert!(term_matches("compliant", "compliance"));
        assert!(!term_matches("50", "30"));
        assert!(!term_matches("hipaa", "gdpr"));
        assert!(!term_matches("cat", "car"));
    }
}
