//! Labelled data: JSONL rows or a tenant intent file; seeded few-shot sampling, stratified folds
//! and multi-intent sets built from single-intent rows.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use closer_models::intent::IntentSet;
use closer_models::rng::Rng;

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
pub struct Row {
    pub text: String,
    pub intent: String,
}

/// Reads `{"text","intent"}` JSONL, or a tenant intent file (`.yaml`/`.yml`: every example a row).
pub fn read_rows(path: &Path) -> anyhow::Result<Vec<Row>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "yaml" || ext == "yml" {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let set =
            IntentSet::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(set
            .intents
            .iter()
            .flat_map(|d| {
                d.examples.iter().map(|e| Row {
                    text: e.clone(),
                    intent: d.name.clone(),
                })
            })
            .collect());
    }
    let f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut rows = vec![];
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if row.text.trim().is_empty() {
            anyhow::bail!("{}: line {}: field `text` is empty", path.display(), i + 1);
        }
        rows.push(row);
    }
    if rows.is_empty() {
        anyhow::bail!("{}: no rows", path.display());
    }
    Ok(rows)
}

/// Rows grouped by label, labels sorted, each group in file order.
pub(crate) fn by_label(rows: &[Row]) -> BTreeMap<&str, Vec<usize>> {
    let mut m: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        m.entry(r.intent.as_str()).or_default().push(i);
    }
    m
}

/// `n` rows of every label (all of a label's rows when it has fewer), chosen by `seed`.
pub fn shots(rows: &[Row], n: usize, seed: u64) -> Vec<Row> {
    let mut rng = Rng::new(seed);
    let mut out = vec![];
    for (_, mut idx) in by_label(rows) {
        rng.shuffle(&mut idx);
        idx.truncate(n);
        idx.sort_unstable();
        out.extend(idx.into_iter().map(|i| rows[i].clone()));
    }
    out
}

/// Fold number of each row: a seeded, stratified assignment to `k` folds.
pub fn folds(rows: &[Row], k: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut fold = vec![0; rows.len()];
    let mut next = 0;
    for (_, mut idx) in by_label(rows) {
        rng.shuffle(&mut idx);
        for i in idx {
            fold[i] = next % k;
            next += 1;
        }
    }
    fold
}

/// A message with several intents and the set it should be classified as.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct MultiRow {
    pub text: String,
    pub intents: Vec<String>,
}

fn ends_sentence(t: &str) -> bool {
    t.trim_end().ends_with(['.', '?', '!'])
}

fn looks_like_question(t: &str) -> bool {
    const Q: [&str; 16] = [
        "how", "what", "why", "when", "where", "who", "which", "can", "could", "do", "does", "is",
        "are", "will", "would", "should",
    ];
    let first = t.split_whitespace().next().unwrap_or("").to_lowercase();
    Q.contains(&first.as_str())
}

/// `n` messages, each 2 or 3 single-intent rows of different intents joined as a visitor would
/// write them (sentence punctuation added where missing, "Also," or "And" between some),
/// chosen by `seed`. Rows labelled `skip` (the out-of-scope label) are not used.
pub fn multi_intent(rows: &[Row], n: usize, seed: u64, skip: Option<&str>) -> Vec<MultiRow> {
    let groups: Vec<Vec<usize>> = by_label(rows)
        .into_iter()
        .filter(|(l, _)| Some(*l) != skip)
        .map(|(_, v)| v)
        .collect();
    let mut out = vec![];
    if groups.len() < 2 {
        return out;
    }
    let mut rng = Rng::new(seed);
    for _ in 0..n {
        let parts = if groups.len() >= 3 && rng.below(2) == 1 {
            3
        } else {
            2
        };
        let mut picked_groups: Vec<usize> = vec![];
        while picked_groups.len() < parts {
            let g = rng.below(groups.len());
            if !picked_groups.contains(&g) {
                picked_groups.push(g);
            }
        }
        let mut text = String::new();
        let mut intents = vec![];
        for (j, &g) in picked_groups.iter().enumerate() {
            let row = &rows[groups[g][rng.below(groups[g].len())]];
            let mut piece = row.text.trim().to_string();
            if !ends_sentence(&piece) {
                piece.push(if looks_like_question(&piece) {
                    '?'
                } else {
                    '.'
                });
            }
            if j > 0 {
                text.push(' ');
                match rng.below(4) {
                    0 => {
                        text.push_str("Also, ");
                        piece = lower_first(&piece);
                    }
                    1 => {
                        text.push_str("And ");
                        piece = lower_first(&piece);
                    }
                    _ => {}
                }
            }
            text.push_str(&piece);
            intents.push(row.intent.clone());
        }
        intents.sort();
        out.push(MultiRow { text, intents });
    }
    out
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        // Keep "I" and acronyms ("SOC", "API") as they are.
        Some(f)
            if (f != 'I' || !s[1..].starts_with([' ', '\'']))
                && !c.clone().next().is_some_and(char::is_uppercase) =>
        {
            f.to_lowercase().chain(c).collect()
        }
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        let mut v = vec![];
        for l in ["a", "b", "c"] {
            for i in 0..10 {
                v.push(Row {
                    text: format!("{l} text {i}"),
                    intent: l.into(),
                });
            }
        }
        v
    }

    #[test]
    fn shots_take_n_per_label_reproducibly() {
        let r = rows();
        let s = shots(&r, 3, 1);
        assert_eq!(s.len(), 9);
        assert_eq!(s, shots(&r, 3, 1));
        assert_ne!(s, shots(&r, 3, 2));
        assert_eq!(shots(&r, 50, 1).len(), 30);
    }

    #[test]
    fn folds_are_stratified() {
        let r = rows();
        let f = folds(&r, 5, 9);
        for k in 0..5 {
            for l in ["a", "b", "c"] {
                assert_eq!(
                    r.iter()
                        .zip(&f)
                        .filter(|(x, &g)| g == k && x.intent == l)
                        .count(),
                    2
                );
            }
        }
    }

    #[test]
    fn multi_intent_rows_join_different_intents() {
        let m = multi_intent(&rows(), 50, 3, Some("c"));
        assert_eq!(m.len(), 50);
        for x in &m {
            assert_eq!(x.intents.len(), 2, "{x:?}");
            assert_ne!(x.intents[0], x.intents[1]);
            assert!(!x.intents.contains(&"c".to_string()));
        }
        assert_eq!(m, multi_intent(&rows(), 50, 3, Some("c")));
        assert!(multi_intent(&rows(), 20, 3, None)
            .iter()
            .any(|x| x.intents.len() == 3));
    }

    #[test]
    fn lower_first_keeps_i_and_acronyms() {
        assert_eq!(lower_first("How much?"), "how much?");
        assert_eq!(lower_first("I need help."), "I need help.");
        assert_eq!(lower_first("SOC 2?"), "SOC 2?");
    }
}
