//! Visitor text → the tantivy query over a real (small) knowledge base, with the fake embedder.
#![no_main]
use std::sync::{Arc, OnceLock};

use closer_kb::KnowledgeBase;
use libfuzzer_sys::fuzz_target;

fn kb() -> &'static KnowledgeBase {
    static KB: OnceLock<(tempfile::TempDir, KnowledgeBase)> = OnceLock::new();
    &KB.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../knowledge-base/examples/applinks");
        closer_kb::load::load_dir(&src, dir.path(), None).expect("demo tenant");
        let embedder = Arc::new(closer_models::fake::HashEmbedder::default());
        let kb = KnowledgeBase::open(dir.path(), "applinks", embedder).expect("open");
        (dir, kb)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let Some((intent, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let text = closer_kb::visible(&text);
    let intent = ["pricing", "security_compliance", "nonexistent"].get(*intent as usize % 4);
    let _ = kb().search(&text, 5, intent.copied());
});
