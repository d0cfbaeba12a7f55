//! `closer kb bench`: the knowledge base at scale, in process with the real encoder.
//!
//! Generates `--facts` synthetic facts (English sales vocabulary plus product codes, seeded),
//! ingests them as one JSONL batch through the same parse + apply path as `Knowledge.Ingest`,
//! waits for the background embedder, then times searches: the whole `search` (query embedding +
//! BM25 + dense rerank) and the retrieval alone with the query vector computed beforehand (the
//! part that grows with the index; Converse reuses its clause vectors the same way). Reports the
//! index's size on disk and the process's resident memory before and after.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use closer_kb::{load, Batch, KnowledgeBase, TenantProfile};
use closer_models::Embedder;
use serde::Serialize;

use crate::bench::{percentiles, Percentiles};

#[derive(Debug, Clone, clap::Args)]
pub struct KbBenchArgs {
    /// Facts to generate and ingest.
    #[arg(long, default_value_t = 100_000)]
    pub facts: usize,
    /// Searches to time.
    #[arg(long, default_value_t = 2_000)]
    pub searches: usize,
    /// Folder of ready models.
    #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
    pub model_dir: PathBuf,
    /// Where the bench tenant is written (default: a fresh folder under the system temp dir,
    /// removed afterwards). An existing folder from an earlier run with the same `--facts` and
    /// `--seed` reuses its logged vectors, so only the ingest and search are timed again.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Also write the figures here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct KbBenchReport {
    pub facts: usize,
    pub jsonl_mib: f64,
    /// Parse + validate + index commit; facts are searchable (BM25) when it returns.
    pub ingest_s: f64,
    pub ingest_facts_per_s: f64,
    /// Time until every fact had its vector (background embedder), after the ingest returned.
    pub embed_s: f64,
    pub facts_embedded: usize,
    pub embed_facts_per_s: f64,
    /// `KnowledgeBase::search`: query embedding + BM25 + dense rerank.
    pub search: Percentiles,
    /// BM25 + dense rerank with the query vector given.
    pub retrieval: Percentiles,
    /// The query embedding alone.
    pub query_embedding: Percentiles,
    /// Share of searches whose top hit is the fact the query was made from.
    pub top1_source_rate: f64,
    pub index_disk_mib: f64,
    pub vector_log_mib: f64,
    /// Resident memory with the encoder loaded, before the tenant was opened.
    pub rss_before_mib: f64,
    /// After ingest, embedding and the searches.
    pub rss_after_mib: f64,
    pub rss_peak_mib: f64,
}

const WORDS: &[&str] = &[
    "pricing",
    "seat",
    "license",
    "annual",
    "monthly",
    "discount",
    "invoice",
    "billing",
    "plan",
    "enterprise",
    "starter",
    "growth",
    "team",
    "user",
    "admin",
    "role",
    "permission",
    "sso",
    "saml",
    "scim",
    "audit",
    "log",
    "export",
    "import",
    "api",
    "webhook",
    "integration",
    "salesforce",
    "hubspot",
    "slack",
    "teams",
    "zapier",
    "okta",
    "azure",
    "google",
    "workspace",
    "security",
    "compliance",
    "encryption",
    "backup",
    "retention",
    "region",
    "europe",
    "us",
    "data",
    "residency",
    "gdpr",
    "hipaa",
    "soc",
    "iso",
    "pen",
    "test",
    "uptime",
    "sla",
    "support",
    "ticket",
    "response",
    "hour",
    "onboarding",
    "training",
    "migration",
    "trial",
    "demo",
    "contract",
    "renewal",
    "cancel",
    "refund",
    "payment",
    "card",
    "wire",
    "currency",
    "tax",
    "vat",
    "quote",
    "volume",
    "tier",
    "limit",
    "storage",
    "bandwidth",
    "mobile",
    "app",
    "ios",
    "android",
    "browser",
    "offline",
    "sync",
    "dashboard",
    "report",
    "analytics",
    "forecast",
    "pipeline",
    "deal",
    "lead",
    "account",
    "owner",
    "territory",
    "partner",
    "reseller",
    "nonprofit",
    "education",
    "startup",
    "custom",
    "domain",
    "branding",
    "template",
    "workflow",
    "automation",
    "approval",
    "signature",
    "document",
    "file",
    "share",
    "link",
    "password",
    "mfa",
    "device",
    "policy",
    "alert",
    "status",
    "incident",
    "maintenance",
    "release",
    "roadmap",
    "feature",
    "request",
    "beta",
    "limitations",
    "accessibility",
    "language",
    "translation",
    "timezone",
    "calendar",
    "meeting",
    "schedule",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Skewed towards the start of the list, like word frequencies.
    fn word(&mut self) -> &'static str {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        WORDS[((u * u) * WORDS.len() as f64) as usize]
    }
}

/// One synthetic fact: a question and answer over sales vocabulary with a product code that
/// makes it findable, as JSONL.
fn fact_line(i: usize, rng: &mut Rng) -> (String, String) {
    let code = format!("px{}", 1000 + i);
    let q: Vec<&str> = (0..4 + rng.below(5)).map(|_| rng.word()).collect();
    let a: Vec<&str> = (0..12 + rng.below(14)).map(|_| rng.word()).collect();
    let question = format!("How does {code} handle {}?", q.join(" "));
    let answer = format!(
        "{code} supports {} for {} users at ${} per seat.",
        a.join(" "),
        10 + rng.below(990),
        5 + rng.below(95)
    );
    let line = serde_json::json!({
        "id": format!("f{i:06}"),
        "kind": "faq",
        "question": question,
        "answer": answer,
        "tags": [rng.word()],
    })
    .to_string();
    (line, format!("{code} {}", q[..q.len().min(3)].join(" ")))
}

fn dir_size(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn self_status_mib(key: &str) -> f64 {
    crate::bench::proc_status_kib(std::process::id(), key).unwrap_or(f64::NAN) / 1024.0
}

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(args: KbBenchArgs) -> anyhow::Result<()> {
    let paths = closer_models::source::ModelPaths::new(&args.model_dir);
    paths.check()?;
    let embedder: Arc<dyn Embedder> = Arc::new(closer_models::encoder::TextEncoder::open(
        &paths,
        closer_models::source::EncoderModel::MiniLm,
    )?);
    let (data, remove) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("closer-kb-bench-{}", std::process::id())),
            true,
        ),
    };
    let tenant = "bench";
    if !closer_kb::tenant_dir(&data, tenant)
        .join("tenant.yaml")
        .exists()
    {
        load::create_empty(
            &data,
            &TenantProfile {
                id: tenant.into(),
                company: "Bench Co".into(),
                names: vec![],
                allowed_origins: vec![],
                identity: closer_kb::IdentityMode::Off,
                identity_secrets: vec![],
                count_claimed_accounts: false,
            },
        )?;
    }

    eprintln!("generating {} facts (seed {})", args.facts, args.seed);
    let mut rng = Rng(args.seed);
    let mut jsonl = String::new();
    let mut queries = vec![];
    for i in 0..args.facts {
        let (line, query) = fact_line(i, &mut rng);
        jsonl.push_str(&line);
        jsonl.push('\n');
        queries.push((format!("f{i:06}"), query));
    }

    let rss_before_mib = self_status_mib("VmRSS:");
    let kb = KnowledgeBase::open(&data, tenant, embedder.clone())?;
    // Whatever an earlier run left unembedded is finished first, so the ingest is timed alone.
    kb.wait_for_vectors(Duration::from_secs(24 * 3600));
    eprintln!("ingesting {:.1} MiB of JSONL", jsonl.len() as f64 / MIB);
    let t = Instant::now();
    let mut files = load::Files::default();
    files.add("bench.jsonl", jsonl.as_bytes())?;
    let summary = kb.apply(Batch {
        facts: files.facts,
        ..Batch::default()
    })?;
    let ingest_s = t.elapsed().as_secs_f64();
    eprintln!(
        "ingested in {ingest_s:.2} s; {} facts wait for vectors",
        summary.facts_pending
    );

    let t = Instant::now();
    let bar = indicatif::ProgressBar::new(summary.facts_pending as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "embedding [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let s = kb.embedding_status();
        bar.set_position((summary.facts_pending.saturating_sub(s.pending)) as u64);
        if let Some(e) = s.error {
            anyhow::bail!("background embedding failed: {e}");
        }
        if kb.wait_for_vectors(Duration::from_secs(1)) {
            break;
        }
    }
    bar.finish_and_clear();
    let embed_s = t.elapsed().as_secs_f64();

    eprintln!("timing {} searches", args.searches);
    let snap = kb.snapshot();
    let now = closer_kb::time::now();
    let (mut search, mut retrieval, mut encode) = (vec![], vec![], vec![]);
    let mut top1 = 0usize;
    for k in 0..args.searches {
        let (source, q) = &queries[rng.below(queries.len())];
        // Half the queries lose the product code: a broad query with many BM25 matches.
        let q = if k % 2 == 0 {
            q.as_str()
        } else {
            q.split_once(' ').map_or(q.as_str(), |x| x.1)
        };
        let t = Instant::now();
        let hits = kb.search(q, 5, None)?;
        search.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let qv = embedder.embed(&[q])?.pop().unwrap_or_default();
        encode.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let again = kb.search_vector_at(&snap, q, &qv, 5, None, now);
        retrieval.push(t.elapsed().as_secs_f64() * 1e3);
        if k % 2 == 0 {
            top1 += usize::from(hits.first().is_some_and(|h| &h.fact.id == source));
        }
        debug_assert_eq!(hits.len(), again.len());
    }
    let dir = closer_kb::tenant_dir(&data, tenant);
    let report = KbBenchReport {
        facts: snap.facts().len(),
        jsonl_mib: jsonl.len() as f64 / MIB,
        ingest_s,
        ingest_facts_per_s: args.facts as f64 / ingest_s,
        embed_s,
        facts_embedded: summary.facts_pending + summary.facts_embedded,
        embed_facts_per_s: summary.facts_pending as f64 / embed_s.max(1e-9),
        search: percentiles(search),
        retrieval: percentiles(retrieval),
        query_embedding: percentiles(encode),
        top1_source_rate: top1 as f64 / args.searches.div_ceil(2).max(1) as f64,
        index_disk_mib: dir_size(&dir.join("index")) as f64 / MIB,
        vector_log_mib: dir_size(&dir.join("vectors.log")) as f64 / MIB,
        rss_before_mib,
        rss_after_mib: self_status_mib("VmRSS:"),
        rss_peak_mib: self_status_mib("VmHWM:"),
    };
    drop((snap, kb));
    if remove {
        let _ = std::fs::remove_dir_all(&data);
    }
    let p = |x: &Percentiles| format!("{:.2} / {:.2} / {:.2}", x.p50_ms, x.p99_ms, x.max_ms);
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| facts | {} ({:.1} MiB JSONL) |",
        report.facts, report.jsonl_mib
    );
    println!(
        "| ingest (parse + commit, BM25-searchable) | {:.2} s ({:.0} facts/s) |",
        report.ingest_s, report.ingest_facts_per_s
    );
    println!(
        "| background embedding | {:.1} s for {} facts ({:.0} facts/s) |",
        report.embed_s, summary.facts_pending, report.embed_facts_per_s
    );
    println!(
        "| retrieval p50 / p99 / max (BM25 + dense rerank) | {} ms |",
        p(&report.retrieval)
    );
    println!(
        "| query embedding p50 / p99 / max | {} ms |",
        p(&report.query_embedding)
    );
    println!(
        "| search p50 / p99 / max (both) | {} ms |",
        p(&report.search)
    );
    println!(
        "| top hit is the source fact (code queries) | {:.1} % |",
        100.0 * report.top1_source_rate
    );
    println!(
        "| index on disk / vector log | {:.1} MiB / {:.1} MiB |",
        report.index_disk_mib, report.vector_log_mib
    );
    println!(
        "| RSS before / after / peak | {:.0} / {:.0} / {:.0} MiB |",
        report.rss_before_mib, report.rss_after_mib, report.rss_peak_mib
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
