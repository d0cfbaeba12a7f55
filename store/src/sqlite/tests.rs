use super::*;

/// A SQLite file in a temporary folder; each handle opens it anew (as another process would).
pub(crate) struct SqliteFile(tempfile::TempDir);

impl crate::conformance::Backend for SqliteFile {
    fn open(&self) -> Box<dyn Store> {
        Box::new(SqliteStore::open(&self.0.path().join("closer.db")).unwrap())
    }
}

fn sqlite() -> Option<SqliteFile> {
    Some(SqliteFile(tempfile::tempdir().unwrap()))
}

crate::conformance_tests!(sqlite());

#[test]
fn turns_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closer.db");
    let w = TurnWrite {
        tenant: "t".into(),
        conversation_id: "c1".into(),
        messages: vec![Message {
            turn: 1,
            author: Author::Visitor,
            text: "hi".into(),
            at_ms: 1,
        }],
        ..TurnWrite::default()
    };
    SqliteStore::open(&path)
        .unwrap()
        .record_turn(&w, &|_| vec![])
        .unwrap();
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.lead("t", "c1").unwrap().unwrap().turns, 1);
    assert_eq!(s.transcript("t", "c1").unwrap().len(), 1);
    assert!(SqliteStore::in_memory()
        .unwrap()
        .lead("t", "c1")
        .unwrap()
        .is_none());
}
