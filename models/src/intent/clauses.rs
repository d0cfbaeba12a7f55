//! Splitting a visitor's message into clauses that may each carry an intent.

/// Splits a message into clauses that may each carry an intent: at sentence punctuation, line
/// breaks and semicolons. Returns byte spans, trimmed, without leading conjunctions.
pub fn clauses(text: &str) -> Vec<(usize, usize)> {
    let mut spans = vec![];
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let boundary = match c {
            b'?' | b'!' | b';' | b'\n' => true,
            // A period ends a clause only before whitespace or the end ("$9.50" does not).
            b'.' => i + 1 >= bytes.len() || bytes[i + 1].is_ascii_whitespace(),
            _ => false,
        };
        if boundary {
            spans.push((start, i + 1));
            start = i + 1;
        }
        i += 1;
    }
    if start < text.len() {
        spans.push((start, text.len()));
    }
    spans
        .into_iter()
        .filter_map(|(s, e)| trim_span(text, s, e))
        .collect()
}

const LEADING: [&str; 8] = [
    "and ", "also, ", "also ", "plus ", "but ", "so ", "oh and ", "oh, and ",
];

fn trim_span(text: &str, mut s: usize, mut e: usize) -> Option<(usize, usize)> {
    let seg = &text[s..e];
    if seg.trim().is_empty() {
        // Blank between two boundaries (e.g. "?  \n"): trimming both ends would cross.
        return None;
    }
    let lead = seg.len() - seg.trim_start().len();
    s += lead;
    e -= seg.len() - seg.trim_end().len();
    loop {
        let lower = text[s..e].to_ascii_lowercase();
        match LEADING.iter().find(|w| lower.starts_with(*w)) {
            Some(w) => s += w.len(),
            None => break,
        }
    }
    if text[s..e].chars().any(|c| c.is_alphanumeric()) {
        Some((s, e))
    } else {
        None
    }
}
