//! Hybrid search over a tenant's facts: BM25 candidates from the index, reranked with the
//! query's vector, filtered by validity and fused with an intent bonus.

use std::collections::HashMap;

use tantivy::collector::TopDocs;
use tantivy::columnar::Column;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::Term;

use crate::error::Result;
use crate::knowledge_base::KnowledgeBase;
use crate::records::Fact;
use crate::snapshot::Snapshot;
use crate::time;

/// A fact with its scores.
#[derive(Debug, Clone)]
pub struct Hit {
    pub fact: Fact,
    pub score: f32,
    pub bm25: f32,
    pub dense: f32,
}

/// Up to this many facts, every valid fact is scored densely (paraphrases with no shared word
/// are found); above it, only the BM25 candidates are reranked.
pub const DENSE_SCAN_MAX: usize = 10_000;
/// BM25 candidates per search.
pub const BM25_CANDIDATES: usize = 100;
/// BM25 weight of a match in the question field relative to the answer and tags.
const QUESTION_BOOST: f32 = 2.0;

impl KnowledgeBase {
    /// Hybrid search within this tenant, over facts valid now.
    pub fn search(&self, query: &str, limit: usize, intent: Option<&str>) -> Result<Vec<Hit>> {
        self.search_at(query, limit, intent, time::now())
    }

    /// Hybrid search over the facts valid at `now` (Unix seconds); embeds the query.
    pub fn search_at(
        &self,
        query: &str,
        limit: usize,
        intent: Option<&str>,
        now: i64,
    ) -> Result<Vec<Hit>> {
        let qv = self
            .shared
            .embedder
            .embed(&[query])?
            .pop()
            .unwrap_or_default();
        Ok(self.search_vector_at(&self.snapshot(), query, &qv, limit, intent, now))
    }

    /// Hybrid search in `snap` with the query's encoder vector already computed.
    ///
    /// Candidates: the top [`BM25_CANDIDATES`] BM25 hits, plus every valid fact while the tenant
    /// has at most [`DENSE_SCAN_MAX`] facts. Fusion:
    /// `score = w_bm25 · bm25 / max_bm25 + w_dense · max(cosine, 0) + bonus`, where the BM25 part
    /// is normalised by the best BM25 score of the query (so it lies in [0, 1]), the cosine is
    /// between the query's and the fact's encoder vectors (0 while a fact waits for its vector),
    /// and `bonus` is added when the fact is tagged with `intent`. The question field is boosted
    /// ×2 for BM25; visitor text is reduced to words, so no input is a syntax error.
    pub fn search_vector_at(
        &self,
        snap: &Snapshot,
        query: &str,
        qv: &[f32],
        limit: usize,
        intent: Option<&str>,
        now: i64,
    ) -> Vec<Hit> {
        let limit = limit.clamp(1, 50);
        let bm25 = self.bm25(snap, query);
        let max_bm25 = bm25.iter().map(|x| x.1).fold(0f32, f32::max);
        let candidates: Vec<(usize, f32)> = if snap.facts.len() <= DENSE_SCAN_MAX {
            let mut b = vec![0f32; snap.facts.len()];
            for &(i, s) in &bm25 {
                b[i] = s;
            }
            b.into_iter().enumerate().collect()
        } else {
            bm25
        };
        let w = self.weights;
        let mut scored: Vec<(f32, f32, f32, usize)> = candidates
            .into_iter()
            .filter(|&(i, _)| snap.facts[i].is_valid_at(now))
            .map(|(i, b)| {
                let f = &snap.facts[i];
                let dense = snap.vectors[i]
                    .as_ref()
                    .map_or(0.0, |v| closer_models::dot(qv, v));
                let bonus = match intent {
                    Some(x) if f.intents.iter().any(|y| y == x) => w.intent_bonus,
                    _ => 0.0,
                };
                let nb = if max_bm25 > 0.0 { b / max_bm25 } else { 0.0 };
                (w.bm25 * nb + w.dense * dense.max(0.0) + bonus, b, dense, i)
            })
            .collect();
        let order = |a: &(f32, f32, f32, usize), b: &(f32, f32, f32, usize)| {
            b.0.total_cmp(&a.0)
                .then_with(|| snap.facts[a.3].id.cmp(&snap.facts[b.3].id))
        };
        if scored.len() > limit {
            scored.select_nth_unstable_by(limit - 1, order);
            scored.truncate(limit);
        }
        scored.sort_by(order);
        scored
            .into_iter()
            .map(|(score, bm25, dense, i)| Hit {
                fact: snap.facts[i].clone(),
                score,
                bm25,
                dense,
            })
            .collect()
    }

    /// One flat disjunction of term queries over the question (boosted), answer and tags fields.
    /// Flat on purpose: tantivy prunes a union of plain (or boosted) term queries with
    /// block-max WAND, while the query parser's nesting (one boolean per word) scores every
    /// posting of every word — at 100k facts common words made that the slowest part of search.
    fn bm25_query(&self, words: &str) -> BooleanQuery {
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (field, boost) in [
            (self.fields.question, QUESTION_BOOST),
            (self.fields.answer, 1.0),
            (self.fields.tags, 1.0),
        ] {
            let Ok(mut analyzer) = self.index.tokenizer_for_field(field) else {
                continue;
            };
            let mut stream = analyzer.token_stream(words);
            while let Some(token) = stream.next() {
                if !seen.insert((field, token.text.clone())) {
                    continue;
                }
                let term = Term::from_field_text(field, &token.text);
                let tq: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                let q: Box<dyn Query> = if boost == 1.0 {
                    tq
                } else {
                    Box::new(BoostQuery::new(tq, boost))
                };
                clauses.push((Occur::Should, q));
            }
        }
        BooleanQuery::new(clauses)
    }

    /// The top BM25 hits of `query` in `snap`, as (fact index, score).
    fn bm25(&self, snap: &Snapshot, query: &str) -> Vec<(usize, f32)> {
        let Some(searcher) = &snap.searcher else {
            return vec![];
        };
        // Only words reach the parser: query syntax typed by a visitor has no meaning here.
        let words: String = query
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .collect::<String>()
            .to_lowercase();
        if words.trim().is_empty() {
            return vec![];
        }
        let q = self.bm25_query(&words);
        let top = match searcher.search(&q, &TopDocs::with_limit(BM25_CANDIDATES)) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "BM25 search failed; dense scores only");
                return vec![];
            }
        };
        let mut keys: HashMap<u32, Option<Column<u64>>> = HashMap::new();
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let seg = searcher.segment_reader(addr.segment_ord);
            let key = keys
                .entry(addr.segment_ord)
                .or_insert_with(|| seg.fast_fields().u64("key").ok())
                .as_ref()
                .and_then(|c| c.first(addr.doc_id));
            match key.and_then(|k| snap.by_key.get(&k)) {
                Some(&i) if i != usize::MAX => out.push((i, score)),
                // Two ids share the key: read the id itself.
                Some(_) => {
                    let mut id = String::new();
                    let column = seg.fast_fields().str("id").ok().flatten();
                    let ord = column
                        .as_ref()
                        .and_then(|c| c.term_ords(addr.doc_id).next());
                    if let (Some(c), Some(ord)) = (column.as_ref(), ord) {
                        if matches!(c.ord_to_str(ord, &mut id), Ok(true)) {
                            if let Some(&i) = snap.by_id.get(&id) {
                                out.push((i, score));
                            }
                        }
                    }
                }
                None => {}
            }
        }
        out
    }
}
