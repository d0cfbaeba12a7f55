use super::*;

/// A fresh schema on the test server (`CLOSER_TEST_DATABASE_URL`); each handle is a new pool
/// whose connections use that schema (as another replica would).
pub(crate) struct PgSchema {
    config: postgres::Config,
}

impl crate::conformance::Backend for PgSchema {
    fn open(&self) -> Box<dyn Store> {
        Box::new(PgStore::connect_with(self.config.clone()).unwrap())
    }
}

/// The test database, or `None` (printed) when none is configured; with
/// `CLOSER_TEST_REQUIRE_BACKENDS=1` (CI) a missing one fails the test instead.
pub(crate) fn pg() -> Option<PgSchema> {
    let Ok(url) = std::env::var("CLOSER_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("CLOSER_TEST_REQUIRE_BACKENDS").as_deref() != Ok("1"),
            "CLOSER_TEST_REQUIRE_BACKENDS=1 but CLOSER_TEST_DATABASE_URL is not set \
             (run the tests through scripts/backends.sh)"
        );
        eprintln!(
            "skipped: CLOSER_TEST_DATABASE_URL is not set (scripts/backends.sh starts PostgreSQL)"
        );
        return None;
    };
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let schema = format!(
        "closer_test_{}_{}_{}",
        std::process::id(),
        now_ms(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let mut config: postgres::Config = url.parse().expect("CLOSER_TEST_DATABASE_URL");
    outside_runtime(|| {
        let mut admin = config.connect(NoTls)?;
        admin.batch_execute(&format!("CREATE SCHEMA {schema}"))?;
        Ok(())
    })
    .expect("create a schema on the test database");
    config.options(&format!("-c search_path={schema}"));
    Some(PgSchema { config })
}

crate::conformance_tests!(pg());

#[test]
fn replicas_starting_together_apply_the_migrations_once() {
    let Some(b) = pg() else { return };
    let stores: Vec<Box<dyn Store>> = std::thread::scope(|s| {
        let h: Vec<_> = (0..4)
            .map(|_| s.spawn(|| crate::conformance::Backend::open(&b)))
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut c = b.config.connect(NoTls).unwrap();
    let n: i64 = c
        .query_one("SELECT COUNT(*) FROM closer_migrations", &[])
        .unwrap()
        .get(0);
    assert_eq!(n as usize, schema::MIGRATIONS.len());
    assert_eq!(stores[0].last_cursor().unwrap(), 0);
}

#[test]
fn a_lost_database_is_a_transient_error_and_a_bad_url_names_the_flag() {
    let e = PgStore::connect("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
        .err()
        .expect("nothing listens on port 1");
    assert!(e.is_transient(), "{e}");
    let e = PgStore::connect("postgresql://x@h:notaport/db")
        .err()
        .unwrap();
    assert!(!e.is_transient());
    assert!(e.to_string().contains("--database-url"), "{e}");
}

#[tokio::test]
async fn called_from_an_async_task_it_does_not_block_the_runtime_into_a_panic() {
    let Some(b) = pg() else { return };
    let s = crate::conformance::Backend::open(&b);
    s.append_events(&[NewEvent {
        kind: "k".into(),
        tenant: "t".into(),
        conversation_id: None,
        rep_id: None,
        team: None,
        payload: serde_json::json!({}),
    }])
    .unwrap();
    assert_eq!(s.last_cursor().unwrap(), 1);
}
