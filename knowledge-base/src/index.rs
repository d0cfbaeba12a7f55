//! The tantivy side: the schema of a fact document, writing facts in one commit, reading them
//! back, and opening (or upgrading) a tenant's index.

use std::collections::HashMap;
use std::path::Path;

use tantivy::schema::{Field, Schema, TextFieldIndexing, TextOptions, Value, FAST, STORED, STRING};
use tantivy::{doc, Index, Searcher, TantivyDocument, Term};

use crate::error::{io_err, Result};
use crate::records::Fact;
use crate::vectors;

#[derive(Clone, Copy)]
pub(crate) struct Fields {
    pub(crate) id: Field,
    pub(crate) kind: Field,
    pub(crate) question: Field,
    pub(crate) answer: Field,
    pub(crate) tags: Field,
    pub(crate) intents: Field,
    pub(crate) valid_from: Field,
    pub(crate) valid_until: Field,
    /// [`id_key`] of the id, a u64 column: resolving a hit to its fact through the id's
    /// string column cost more than the BM25 search itself at 100k facts.
    pub(crate) key: Field,
}

/// A 64-bit key of a fact id (FNV-1a) for the index's `key` column.
pub(crate) fn id_key(id: &str) -> u64 {
    vectors::fnv(vectors::FNV_START, id.as_bytes())
}

/// Fact index by [`id_key`]; a key two ids share maps to `usize::MAX` (resolved by id).
pub(crate) fn key_map(facts: &[Fact]) -> HashMap<u64, usize> {
    let mut m = HashMap::with_capacity(facts.len());
    for (i, f) in facts.iter().enumerate() {
        m.entry(id_key(&f.id))
            .and_modify(|x| *x = usize::MAX)
            .or_insert(i);
    }
    m
}

pub(crate) fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(tantivy::schema::IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let f = Fields {
        id: b.add_text_field("id", STRING | STORED | FAST),
        kind: b.add_text_field("kind", STRING | STORED),
        question: b.add_text_field("question", text.clone()),
        answer: b.add_text_field("answer", text.clone()),
        tags: b.add_text_field("tags", text),
        intents: b.add_text_field("intents", STRING | STORED),
        valid_from: b.add_text_field("valid_from", STORED),
        valid_until: b.add_text_field("valid_until", STORED),
        key: b.add_u64_field("key", FAST),
    };
    (b.build(), f)
}

/// Every committed fact in a searcher's generation, sorted by id.
pub(crate) fn read_facts(searcher: &Searcher, fields: Fields) -> Result<Vec<Fact>> {
    let mut facts = vec![];
    for seg in searcher.segment_readers() {
        let store = seg
            .get_store_reader(64)
            .map_err(|e| io_err(Path::new("store"), e))?;
        for doc_id in 0..seg.max_doc() {
            if seg.is_deleted(doc_id) {
                continue;
            }
            let d: TantivyDocument = store.get(doc_id)?;
            facts.push(to_fact(&d, fields));
        }
    }
    facts.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(facts)
}

fn to_fact(d: &TantivyDocument, fields: Fields) -> Fact {
    let one = |f: Field| {
        d.get_first(f)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let opt = |f: Field| d.get_first(f).and_then(|v| v.as_str()).map(str::to_string);
    let all = |f: Field| {
        d.get_all(f)
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    Fact {
        id: one(fields.id),
        kind: one(fields.kind),
        question: one(fields.question),
        answer: one(fields.answer),
        tags: all(fields.tags),
        intents: all(fields.intents),
        valid_from: opt(fields.valid_from),
        valid_until: opt(fields.valid_until),
    }
}

/// Writes facts into an index in one commit: upsert by id and delete `delete_ids`, or replace
/// everything when `replace_all`.
pub(crate) fn write_facts(
    index: &Index,
    facts: &[Fact],
    delete_ids: &[String],
    replace_all: bool,
) -> Result<()> {
    let (_, f) = schema();
    let mut writer: tantivy::IndexWriter = index.writer(32_000_000)?;
    if replace_all {
        writer.delete_all_documents()?;
    }
    for id in delete_ids {
        writer.delete_term(Term::from_field_text(f.id, id));
    }
    for fact in facts {
        writer.delete_term(Term::from_field_text(f.id, &fact.id));
        let mut d = doc!(
            f.id => fact.id.as_str(),
            f.kind => fact.kind.as_str(),
            f.question => fact.question.as_str(),
            f.answer => fact.answer.as_str(),
            f.key => id_key(&fact.id),
        );
        for t in &fact.tags {
            d.add_text(f.tags, t);
        }
        for i in &fact.intents {
            d.add_text(f.intents, i);
        }
        if let Some(v) = &fact.valid_from {
            d.add_text(f.valid_from, v);
        }
        if let Some(v) = &fact.valid_until {
            d.add_text(f.valid_until, v);
        }
        writer.add_document(d)?;
    }
    writer.commit()?;
    writer.wait_merging_threads()?;
    Ok(())
}

/// Opens or creates an index for a full replacement (an index of an older schema is replaced).
pub(crate) fn create_index(dir: &Path) -> Result<Index> {
    let (schema, _) = schema();
    if let Ok(i) = Index::open_in_dir(dir) {
        if i.schema() == schema {
            return Ok(i);
        }
        std::fs::remove_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    Ok(Index::create_in_dir(dir, schema)?)
}

/// Opens an index; one written before fact validity dates existed is copied into the current
/// schema first (a new folder swapped in by renames, so a crash leaves one of the two intact).
pub(crate) fn open_or_upgrade(dir: &Path) -> Result<Index> {
    let (schema, _) = schema();
    let upgrade = dir.with_extension("upgrade");
    let old_dir = dir.with_extension("old");
    if !dir.exists() && old_dir.exists() {
        // A crash between the two renames below: the old folder is still whole.
        std::fs::rename(&old_dir, dir).map_err(|e| io_err(dir, e))?;
    }
    let index = Index::open_in_dir(dir)?;
    if index.schema() == schema {
        return Ok(index);
    }
    let old = index.schema();
    let reader = index.reader()?;
    let searcher = reader.searcher();
    let mut facts = vec![];
    for seg in searcher.segment_readers() {
        let store = seg.get_store_reader(64).map_err(|e| io_err(dir, e))?;
        for doc_id in 0..seg.max_doc() {
            if seg.is_deleted(doc_id) {
                continue;
            }
            let d: TantivyDocument = store.get(doc_id)?;
            let one = |n: &str| {
                old.get_field(n)
                    .ok()
                    .and_then(|f| d.get_first(f))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let all = |n: &str| -> Vec<String> {
                old.get_field(n)
                    .map(|f| {
                        d.get_all(f)
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            facts.push(Fact {
                id: one("id"),
                kind: one("kind"),
                question: one("question"),
                answer: one("answer"),
                tags: all("tags"),
                intents: all("intents"),
                valid_from: None,
                valid_until: None,
            });
        }
    }
    drop((searcher, reader, index));
    if upgrade.exists() {
        std::fs::remove_dir_all(&upgrade).map_err(|e| io_err(&upgrade, e))?;
    }
    std::fs::create_dir_all(&upgrade).map_err(|e| io_err(&upgrade, e))?;
    let fresh = Index::create_in_dir(&upgrade, schema)?;
    write_facts(&fresh, &facts, &[], true)?;
    drop(fresh);
    std::fs::rename(dir, &old_dir).map_err(|e| io_err(dir, e))?;
    std::fs::rename(&upgrade, dir).map_err(|e| io_err(dir, e))?;
    std::fs::remove_dir_all(&old_dir).map_err(|e| io_err(&old_dir, e))?;
    tracing::info!(index = %dir.display(), facts = facts.len(), "index upgraded to the current schema");
    Ok(Index::open_in_dir(dir)?)
}
