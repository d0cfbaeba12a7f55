//! `closer-eval grounding`: a question set through a running server. Per question: Knowledge.Search
//! (retrieval recall@1/@5 of the expected facts) and one Converse turn (the reply's cited facts,
//! its text and hand-offs). Scores: answer correctness (expected facts cited), invented spans (a
//! number, amount, percentage, acronym, name, email or URL in a reply that none of the tenant's
//! facts, accounts, reps or fixed lines contains, by the evaluation's own oracle, `oracle.rs`;
//! target 0) and the refusal rate on unanswerable
//! questions (an honest "I don't have that" or a rep hand-off; target 100 %).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use crate::oracle::Backing;
use anyhow::Context;
use clap::Args;
use closer_proto::v1 as pb;
use serde::{Deserialize, Serialize};

#[derive(Args, Clone)]
pub struct GroundingArgs {
    /// The running server, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    server: String,
    /// JSONL: {"question", "tenant", "expected": [fact ids] | "unanswerable": true, "domain"?}.
    /// Account-owner answers are expected as `account:<domain>`.
    #[arg(long)]
    questions: PathBuf,
    #[arg(long, default_value = "grounding-report")]
    out: PathBuf,
    /// Only the first N questions (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
}

#[derive(Debug, Clone, Deserialize)]
struct Question {
    question: String,
    tenant: String,
    #[serde(default)]
    expected: Vec<String>,
    #[serde(default)]
    unanswerable: bool,
    #[serde(default)]
    domain: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Outcome {
    question: String,
    expected: Vec<String>,
    unanswerable: bool,
    retrieved: Vec<String>,
    /// Dense cosine of each retrieved fact.
    retrieved_dense: Vec<f32>,
    cited: Vec<String>,
    reply: String,
    refused: bool,
    correct: bool,
    invented: Vec<String>,
    latency_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct GroundingReport {
    questions: usize,
    answerable: usize,
    unanswerable: usize,
    retrieval_recall_at_1: f64,
    retrieval_recall_at_5: f64,
    retrieval_questions: usize,
    answer_correctness: f64,
    invented_spans: usize,
    refusal_rate: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    outcomes: Vec<Outcome>,
}

/// Everything a tenant's replies may state: its facts, accounts, reps, the fixed lines and its
/// playbook (the qualification questions the bot asks).
async fn evidence(channel: tonic::transport::Channel, tenant: &str) -> anyhow::Result<Vec<String>> {
    let playbook = pb::playbooks_client::PlaybooksClient::new(channel.clone())
        .get(pb::GetPlaybookRequest {
            tenant: tenant.into(),
        })
        .await
        .context("Playbooks.Get")?
        .into_inner()
        .yaml;
    let mut kb = pb::knowledge_client::KnowledgeClient::new(channel);
    let export = kb
        .export(pb::ExportRequest {
            tenant: tenant.into(),
            format: pb::ExportFormat::Jsonl as i32,
        })
        .await
        .context("Knowledge.Export")?
        .into_inner();
    let mut texts: Vec<String> = vec![export.content, playbook];
    for what in [pb::ListWhat::Accounts, pb::ListWhat::Reps] {
        let mut token = String::new();
        loop {
            let r = kb
                .list(pb::ListRequest {
                    tenant: tenant.into(),
                    what: what as i32,
                    page_size: 1000,
                    page_token: token,
                })
                .await?
                .into_inner();
            texts.extend(
                r.accounts
                    .iter()
                    .map(|a| format!("{} {}", a.name, a.domain)),
            );
            texts.extend(r.reps.iter().map(|x| format!("{} {}", x.name, x.email)));
            token = r.next_page_token;
            if token.is_empty() {
                break;
            }
        }
    }
    texts.extend(
        closer_sales::turn::fixed_lines()
            .into_iter()
            .map(str::to_string),
    );
    texts.push(closer_sales::turn::meeting::MEETING_OFFER.to_string());
    Ok(texts)
}

/// What one question got: the reply, the facts it cites, whether a rep was asked for, the
/// latency, and what the turn's meeting proposal stated (slot labels, zone, rep names).
pub(crate) struct Reply {
    pub text: String,
    pub cited: Vec<String>,
    pub handoff: bool,
    pub ms: f64,
    pub proposed: Vec<String>,
}

pub(crate) async fn ask(
    channel: tonic::transport::Channel,
    tenant: &str,
    text: &str,
    domain: Option<String>,
    conversation_id: String,
) -> anyhow::Result<Reply> {
    use pb::converse_response::Event;
    let mut client = pb::assistant_client::AssistantClient::new(channel);
    let start = pb::ConverseRequest {
        event: Some(pb::converse_request::Event::Start(pb::Start {
            tenant: tenant.to_string(),
            conversation_id,
            resume_token: None,
            visitor: Some(pb::VisitorContext {
                company_domain: domain,
                ..Default::default()
            }),
        })),
    };
    let msg = pb::ConverseRequest {
        event: Some(pb::converse_request::Event::Message(pb::VisitorMessage {
            text: text.to_string(),
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(start).await?;
    tx.send(msg).await?;
    let t = Instant::now();
    let mut stream = client
        .converse(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut handoff = false;
    let mut proposed = vec![];
    while let Some(r) = stream.message().await? {
        match r.event {
            Some(Event::Handoff(h)) if h.kind == pb::HandoffKind::RepRequested as i32 => {
                handoff = true
            }
            Some(Event::MeetingProposed(m)) => {
                proposed.push(m.timezone);
                for s in m.slots {
                    proposed.extend([s.label, s.rep_name]);
                }
            }
            Some(Event::Final(f)) => {
                return Ok(Reply {
                    text: f.text,
                    cited: f.fact_ids,
                    handoff,
                    ms: t.elapsed().as_secs_f64() * 1e3,
                    proposed,
                })
            }
            Some(Event::Error(e)) => anyhow::bail!("{}: {}", e.code, e.message),
            _ => {}
        }
    }
    anyhow::bail!("the stream ended without a final reply")
}

pub async fn run(args: GroundingArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.questions)
        .with_context(|| args.questions.display().to_string())?;
    let mut questions = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: Question = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}", args.questions.display(), i + 1))?;
        anyhow::ensure!(
            q.unanswerable == q.expected.is_empty(),
            "{}: line {}: give either `expected` fact ids or `unanswerable: true`",
            args.questions.display(),
            i + 1
        );
        questions.push(q);
    }
    if args.limit > 0 {
        questions.truncate(args.limit);
    }
    // Lazy: the server may still be starting; wait_serving polls until it serves.
    let channel = tonic::transport::Endpoint::from_shared(args.server.clone())?.connect_lazy();
    crate::ui::wait_serving(channel.clone(), &args.server).await?;
    let mut evidence_by_tenant: std::collections::HashMap<String, (Vec<String>, Backing)> =
        Default::default();
    // Every question starts its own conversation (conversations are stored and resumed by id).
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let pb_ = crate::ui::bar(questions.len(), "asking");
    let mut outcomes = vec![];
    for (n, q) in questions.iter().enumerate() {
        if !evidence_by_tenant.contains_key(&q.tenant) {
            let texts = evidence(channel.clone(), &q.tenant).await?;
            let ev = Backing::new(texts.iter().map(String::as_str));
            evidence_by_tenant.insert(q.tenant.clone(), (texts, ev));
        }
        let mut kb = pb::knowledge_client::KnowledgeClient::new(channel.clone());
        let hits = kb
            .search(pb::SearchRequest {
                tenant: q.tenant.clone(),
                query: q.question.clone(),
                limit: 5,
                intent: None,
            })
            .await?
            .into_inner()
            .facts;
        let retrieved_dense: Vec<f32> = hits.iter().map(|f| f.dense).collect();
        let retrieved: Vec<String> = hits
            .into_iter()
            .filter_map(|f| f.fact.map(|f| f.id))
            .collect();
        let Reply {
            text: reply,
            cited,
            handoff,
            ms,
            proposed,
        } = ask(
            channel.clone(),
            &q.tenant,
            &q.question,
            q.domain.clone(),
            format!("grounding-{run}-{n}"),
        )
        .await
        .with_context(|| q.question.clone())?;
        let (texts, ev) = &evidence_by_tenant[&q.tenant];
        // Proposed meeting times are stated from the reps' calendars, not from facts.
        let with_slots;
        let ev = if proposed.is_empty() {
            ev
        } else {
            with_slots = Backing::new(texts.iter().chain(&proposed).map(String::as_str));
            &with_slots
        };
        let invented: Vec<String> = ev.unbacked(&reply);
        let refused = reply.contains(closer_sales::turn::DONT_KNOW) || handoff;
        let correct = !q.unanswerable && q.expected.iter().all(|e| cited.contains(e));
        outcomes.push(Outcome {
            question: q.question.clone(),
            expected: q.expected.clone(),
            unanswerable: q.unanswerable,
            retrieved,
            retrieved_dense,
            cited,
            reply,
            refused,
            correct,
            invented,
            latency_ms: ms,
        });
        pb_.inc(1);
    }
    pb_.finish_and_clear();

    let ratio = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    let answerable: Vec<&Outcome> = outcomes.iter().filter(|o| !o.unanswerable).collect();
    let unanswerable: Vec<&Outcome> = outcomes.iter().filter(|o| o.unanswerable).collect();
    // Retrieval is scored on knowledge facts; account-owner answers come from the accounts table.
    let retrieval: Vec<&&Outcome> = answerable
        .iter()
        .filter(|o| o.expected.iter().all(|e| !e.starts_with("account:")))
        .collect();
    let at = |k: usize| {
        retrieval
            .iter()
            .filter(|o| {
                o.expected
                    .iter()
                    .all(|e| o.retrieved.iter().take(k).any(|r| r == e))
            })
            .count()
    };
    let mut lat: Vec<f64> = outcomes.iter().map(|o| o.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let report = GroundingReport {
        questions: outcomes.len(),
        answerable: answerable.len(),
        unanswerable: unanswerable.len(),
        retrieval_recall_at_1: ratio(at(1), retrieval.len()),
        retrieval_recall_at_5: ratio(at(5), retrieval.len()),
        retrieval_questions: retrieval.len(),
        answer_correctness: ratio(
            answerable.iter().filter(|o| o.correct).count(),
            answerable.len(),
        ),
        invented_spans: outcomes.iter().map(|o| o.invented.len()).sum(),
        refusal_rate: ratio(
            unanswerable.iter().filter(|o| o.refused).count(),
            unanswerable.len(),
        ),
        latency_ms_p50: crate::metrics::percentile(&lat, 0.5),
        latency_ms_p99: crate::metrics::percentile(&lat, 0.99),
        outcomes,
    };
    let mut md = String::new();
    let pct = |x: f64| format!("{:.1} %", x * 100.0);
    let _ = writeln!(md, "| figure | value |\n|---|---|");
    let _ = writeln!(
        md,
        "| questions (answerable / unanswerable) | {} ({} / {}) |",
        report.questions, report.answerable, report.unanswerable
    );
    let _ = writeln!(
        md,
        "| retrieval recall@1 / @5 ({} questions) | {} / {} |",
        report.retrieval_questions,
        pct(report.retrieval_recall_at_1),
        pct(report.retrieval_recall_at_5)
    );
    let _ = writeln!(
        md,
        "| answer correctness (expected facts cited) | {} |",
        pct(report.answer_correctness)
    );
    let _ = writeln!(md, "| invented spans | {} |", report.invented_spans);
    let _ = writeln!(
        md,
        "| refusal or hand-off on unanswerable | {} |",
        pct(report.refusal_rate)
    );
    let _ = writeln!(
        md,
        "| complete reply p50 / p99 | {:.0} / {:.0} ms |",
        report.latency_ms_p50, report.latency_ms_p99
    );
    println!("{md}");
    let mut full = format!(
        "# Grounding evaluation\n\nQuestions: `{}`  \nServer: `{}`\n\n{md}\n",
        args.questions.display(),
        args.server
    );
    let misses: Vec<&Outcome> = report
        .outcomes
        .iter()
        .filter(|o| {
            !o.invented.is_empty()
                || (o.unanswerable && !o.refused)
                || (!o.unanswerable && !o.correct)
        })
        .collect();
    if !misses.is_empty() {
        full.push_str("## Misses\n\n| question | expected | cited | invented | reply |\n|---|---|---|---|---|\n");
        for o in misses {
            let want = if o.unanswerable {
                "refusal".to_string()
            } else {
                o.expected.join(", ")
            };
            let _ = writeln!(
                full,
                "| {} | {want} | {} | {} | {} |",
                o.question,
                o.cited.join(", "),
                o.invented.join(", "),
                o.reply.replace('|', "/").replace('\n', " ")
            );
        }
    }
    crate::ui::write_report(&args.out, &report, &full)
}
