//! Streamed text cut into sentences for the guard.

/// Cuts streamed text into sentences: a sentence ends at `.`, `!` or `?` followed by whitespace
/// (not the dot of an abbreviation such as "U.S." or "e.g."), or at a line break. What is left at the end of the stream is the last sentence.
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
                    && !(c == b'.' && abbreviation(&self.buf[..i]))
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

/// Whether the word ending where a dot follows is dotted initials ("U.S", "e.g", "a.m") or "vs":
/// the dot does not end the sentence.
fn abbreviation(before: &str) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("");
    if word.eq_ignore_ascii_case("vs") {
        return true;
    }
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| p.chars().count() == 1 && p.chars().all(char::is_alphabetic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abbreviations_do_not_end_a_sentence() {
        let mut sp = SentenceSplitter::default();
        let mut got = sp.push("Fees are billed in U.S. dollars, e.g. for ");
        got.extend(sp.push("annual plans. Taxes vs. fees differ. It ends."));
        got.extend(sp.finish());
        assert_eq!(
            got,
            [
                "Fees are billed in U.S. dollars, e.g. for annual plans.",
                "Taxes vs. fees differ.",
                "It ends."
            ]
        );
    }
}
