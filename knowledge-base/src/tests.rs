//! The knowledge base end to end: ingestion, background embedding, restart and search.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use closer_models::Embedder;

use crate::disk::tenant_dir;
use crate::index::{open_or_upgrade, write_facts};
use crate::ingest::Batch;
use crate::knowledge_base::KnowledgeBase;
use crate::load;
use crate::records::Fact;

/// Counts the texts it embeds.
struct Counting {
    inner: closer_models::fake::HashEmbedder,
    texts: AtomicUsize,
}

impl Embedder for Counting {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn embed(&self, texts: &[&str]) -> closer_models::Result<Vec<Vec<f32>>> {
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        self.inner.embed(texts)
    }
    fn name(&self) -> &str {
        "counting"
    }
}

fn counting() -> Arc<Counting> {
    Arc::new(Counting {
        inner: closer_models::fake::HashEmbedder::new(64),
        texts: AtomicUsize::new(0),
    })
}

fn demo(data: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/applinks");
    load::load_dir(&src, data, None).unwrap();
}

fn fact(i: usize) -> Fact {
    Fact {
        id: format!("bulk-{i:05}"),
        kind: "faq".into(),
        question: format!("What is widget number {i}?"),
        answer: format!("Widget {i} is a zebraphone accessory."),
        tags: vec![],
        intents: vec![],
        valid_from: None,
        valid_until: None,
    }
}

#[test]
fn large_batches_are_searchable_at_once_and_embedded_in_the_background() {
    let data = tempfile::tempdir().unwrap();
    demo(data.path());
    let emb = counting();
    let mut kb = KnowledgeBase::open(data.path(), "applinks", emb.clone()).unwrap();
    kb.sync_embed_limit = 10;
    let before = kb.snapshot().facts().len();

    // A small batch is embedded before it returns.
    let s = kb.upsert_facts(&[fact(0)]).unwrap();
    assert_eq!((s.facts_embedded, s.facts_pending), (1, 0));

    // A large one is left to the background, but BM25 finds it at once.
    let bulk: Vec<Fact> = (1..=300).map(fact).collect();
    let s = kb.upsert_facts(&bulk).unwrap();
    assert_eq!(s.facts_embedded, 0);
    assert!(s.facts_pending > 0 && s.facts_pending <= 300);
    let hits = kb.search("widget number 217", 3, None).unwrap();
    assert_eq!(hits[0].fact.id, "bulk-00217");
    assert!(kb.wait_for_vectors(Duration::from_secs(60)));
    let status = kb.embedding_status();
    assert_eq!((status.facts, status.pending), (before + 301, 0));
    let hits = kb.search("widget number 217", 3, None).unwrap();
    assert_eq!(hits[0].fact.id, "bulk-00217");
    assert!(hits[0].dense > 0.3, "vector arrived: {}", hits[0].dense);

    // Reopening reuses every logged vector.
    drop(kb);
    let emb2 = counting();
    let kb = KnowledgeBase::open(data.path(), "applinks", emb2.clone()).unwrap();
    assert_eq!(kb.embedding_status().pending, 0);
    assert_eq!(emb2.texts.load(Ordering::SeqCst), 0);
}

#[test]
fn a_restart_mid_embedding_resumes_where_the_log_ends() {
    let data = tempfile::tempdir().unwrap();
    demo(data.path());
    let kb = KnowledgeBase::open(data.path(), "applinks", counting()).unwrap();
    kb.wait_for_vectors(Duration::from_secs(60));
    let total = kb.snapshot().facts().len() + 400;
    drop(kb);
    // Facts written to the index but not yet embedded, as after a crash mid-embedding.
    let dir = tenant_dir(data.path(), "applinks");
    let index = open_or_upgrade(&dir.join("index")).unwrap();
    let bulk: Vec<Fact> = (0..400).map(fact).collect();
    write_facts(&index, &bulk, &[], false).unwrap();
    drop(index);
    let emb = counting();
    let kb = KnowledgeBase::open(data.path(), "applinks", emb.clone()).unwrap();
    assert!(kb.wait_for_vectors(Duration::from_secs(60)));
    assert_eq!(kb.snapshot().facts().len(), total);
    assert_eq!(emb.texts.load(Ordering::SeqCst), 400, "only the new facts");
}

#[test]
fn deletes_and_changes_reach_bm25_at_once() {
    let data = tempfile::tempdir().unwrap();
    demo(data.path());
    let kb = KnowledgeBase::open(data.path(), "applinks", counting()).unwrap();
    kb.upsert_facts(&[fact(7)]).unwrap();
    let hit = &kb.search("zebraphone", 1, None).unwrap()[0];
    assert!(hit.fact.id == "bulk-00007" && hit.bm25 > 0.0);
    let mut changed = fact(7);
    changed.answer = "Widget 7 is a quokkaphone accessory.".into();
    kb.upsert_facts(&[changed]).unwrap();
    let hit = &kb.search("quokkaphone", 1, None).unwrap()[0];
    assert!(hit.fact.id == "bulk-00007" && hit.bm25 > 0.0);
    assert!(kb
        .search("zebraphone", 5, None)
        .unwrap()
        .iter()
        .all(|h| h.bm25 == 0.0));
    kb.apply(Batch {
        delete_fact_ids: vec!["bulk-00007".into()],
        ..Batch::default()
    })
    .unwrap();
    assert!(kb
        .search("quokkaphone", 50, None)
        .unwrap()
        .iter()
        .all(|h| h.fact.id != "bulk-00007"));
}
