//! Streamed text cut into sentences for the guard.

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
