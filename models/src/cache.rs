//! An embedder wrapper that remembers the vectors of short texts. A Converse turn embeds each
//! clause for intent detection and then searches the knowledge base with the same clause, so the
//! second embedding is a lookup; repeated visitor questions are too.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{Embedder, Result};

/// Calls with more texts than this (bulk fact embedding) bypass the cache.
const MAX_CALL: usize = 16;

/// Two generations: lookups check both; when the young one is full it becomes the old one.
/// Memory stays within about `2 × capacity` vectors, and recently used texts survive.
struct Generations {
    young: HashMap<String, Arc<[f32]>>,
    old: HashMap<String, Arc<[f32]>>,
}

pub struct CachedEmbedder {
    inner: Arc<dyn Embedder>,
    capacity: usize,
    cache: Mutex<Generations>,
}

impl CachedEmbedder {
    pub fn new(inner: Arc<dyn Embedder>, capacity: usize) -> Self {
        Self {
            inner,
            capacity: capacity.max(1),
            cache: Mutex::new(Generations {
                young: HashMap::new(),
                old: HashMap::new(),
            }),
        }
    }

    fn get(&self, text: &str) -> Option<Arc<[f32]>> {
        let mut c = self.cache.lock();
        if let Some(v) = c.young.get(text) {
            return Some(v.clone());
        }
        let v = c.old.get(text)?.clone();
        self.put_locked(&mut c, text, v.clone());
        Some(v)
    }

    fn put_locked(&self, c: &mut Generations, text: &str, v: Arc<[f32]>) {
        if c.young.len() >= self.capacity {
            c.old = std::mem::take(&mut c.young);
        }
        c.young.insert(text.to_string(), v);
    }
}

impl Embedder for CachedEmbedder {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.len() > MAX_CALL {
            return self.inner.embed(texts);
        }
        let mut out: Vec<Option<Vec<f32>>> = texts
            .iter()
            .map(|t| self.get(t).map(|v| v.to_vec()))
            .collect();
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let fresh = self
                .inner
                .embed(&missing.iter().map(|&i| texts[i]).collect::<Vec<_>>())?;
            let mut c = self.cache.lock();
            for (&i, v) in missing.iter().zip(fresh) {
                self.put_locked(&mut c, texts[i], v.clone().into());
                out[i] = Some(v);
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);

    impl Embedder for Counting {
        fn dim(&self) -> usize {
            2
        }
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
            self.0.fetch_add(texts.len(), Ordering::SeqCst);
            Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
        }
        fn name(&self) -> &str {
            "counting"
        }
    }

    #[test]
    fn repeated_texts_are_embedded_once_and_memory_is_bounded() {
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let c = CachedEmbedder::new(inner.clone(), 2);
        assert_eq!(c.embed(&["ab", "abc"]).unwrap()[1], vec![3.0, 1.0]);
        assert_eq!(c.embed(&["abc", "ab"]).unwrap()[0], vec![3.0, 1.0]);
        assert_eq!(inner.0.load(Ordering::SeqCst), 2);
        // Filling the cache moves old texts out after two generations.
        c.embed(&["x1", "x2", "x3", "x4", "x5"]).unwrap();
        let before = inner.0.load(Ordering::SeqCst);
        c.embed(&["ab"]).unwrap();
        assert_eq!(inner.0.load(Ordering::SeqCst), before + 1);
        let g = c.cache.lock();
        assert!(g.young.len() + g.old.len() <= 4);
        assert_eq!(c.name(), "counting");
    }
}
