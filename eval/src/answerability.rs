//! `closer-eval answerability`: trains the answerability judgement (`closer_sales::answerable`)
//! on the tuning tenants through a running server, exactly as a turn sees its clauses: Classify
//! gives the clauses and their intents, Knowledge.Search the candidate facts of each clause, and
//! `answerable::features` the features. A candidate is a positive when it is one of the facts the
//! message's author listed; every candidate of an unanswerable message is a negative. A logistic
//! regression is fitted, and the threshold is the lowest whose share of unanswerable messages
//! that would get a fact stays within `--max-unanswerable-answered`. Also prints a
//! leave-one-tenant-out figure, so the threshold's effect on a tenant it never saw is visible.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use closer_models::intent::{IntentFlag, IntentSet, OUT_OF_SCOPE};
use closer_proto::v1 as pb;
use closer_sales::answerable::{
    answer_cosines, features, Candidate, Clause, Judge, Vocabulary, ANSWER_ENCODER_FEATURES,
    FEATURES, N,
};

use crate::answers::{read_jsonl, yaml_field, Question};

#[derive(Args, Clone)]
pub struct AnswerabilityArgs {
    /// The running server with the tenants loaded.
    #[arg(long)]
    server: String,
    /// Tuning tenant folders (never the locked one).
    #[arg(long = "tenant", required = true)]
    tenants: Vec<PathBuf>,
    /// Where the weights go (e.g. sales/src/answerable.json).
    #[arg(long)]
    out: PathBuf,
    /// The largest share of unanswerable messages allowed to get a fact, on the tuning tenants.
    #[arg(long, default_value_t = 0.03)]
    max_unanswerable_answered: f64,
    /// The hedge is the highest threshold leaving at most this share of answerable messages with
    /// no fact at all, on the tuning tenants.
    #[arg(long, default_value_t = 0.05)]
    max_refused: f64,
    /// L2 penalty of the logistic regression.
    #[arg(long, default_value_t = 1e-3)]
    l2: f32,
    /// Candidates retrieved per clause (what the server uses: `plan::CANDIDATES`).
    #[arg(long, default_value_t = closer_sales::turn::plan::CANDIDATES)]
    candidates: usize,
    /// Facts one clause may cite (what the server uses: `plan::FACTS_PER_CLAUSE`).
    #[arg(long, default_value_t = closer_sales::turn::plan::FACTS_PER_CLAUSE)]
    per_clause: usize,
    /// Also write every candidate's features and label as JSONL here (for inspection).
    #[arg(long)]
    dump: Option<PathBuf>,
}

/// One candidate of one clause.
#[derive(serde::Serialize)]
struct Row {
    text: String,
    fact: String,
    tenant: usize,
    message: usize,
    clause: usize,
    x: [f32; N],
    y: bool,
}

/// What each message needs: the gold facts (empty: unanswerable).
struct Message {
    tenant: usize,
    gold: Vec<String>,
    /// Per row index: the fact id of that row.
    row_facts: Vec<(usize, String)>,
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

fn fit(rows: &[&Row], l2: f32) -> (Vec<f32>, f32) {
    let mut w = vec![0f32; N];
    let mut b = 0f32;
    let n = rows.len().max(1) as f32;
    let lr = 0.5;
    for _ in 0..4000 {
        let mut gw = vec![0f32; N];
        let mut gb = 0f32;
        for r in rows {
            let z = b + w.iter().zip(&r.x).map(|(a, x)| a * x).sum::<f32>();
            let e = sigmoid(z) - f32::from(u8::from(r.y));
            for (g, x) in gw.iter_mut().zip(&r.x) {
                *g += e * x;
            }
            gb += e;
        }
        for (wi, g) in w.iter_mut().zip(&gw) {
            *wi -= lr * (g / n + l2 * *wi);
        }
        b -= lr * gb / n;
    }
    (w, b)
}

/// What a judge (both thresholds) does to the kept tenants' messages.
#[derive(Debug, Default)]
struct Outcome {
    answerable: usize,
    /// Every gold fact picked at `p ≥ threshold`.
    answered: usize,
    /// Every gold fact picked at `p ≥ hedge` (answered or offered as the closest).
    answered_or_closest: usize,
    /// No fact at all (the visitor hears "I don't have that information").
    refused: usize,
    unanswerable: usize,
    /// Some fact at `p ≥ threshold` (stated as an answer: the failure to avoid).
    unanswerable_answered: usize,
    /// Some fact at `p ≥ hedge` only (stated as the closest, with a rep).
    unanswerable_closest: usize,
}

fn outcome(
    judge: &Judge,
    per_clause: usize,
    rows: &[Row],
    messages: &[Message],
    keep: &dyn Fn(usize) -> bool,
) -> Outcome {
    let mut o = Outcome::default();
    for (m, msg) in messages.iter().enumerate() {
        if !keep(msg.tenant) {
            continue;
        }
        // Per clause, the candidates that reach each threshold.
        let (mut sure, mut any): (Vec<&str>, Vec<&str>) = (vec![], vec![]);
        let mut clauses: Vec<usize> = rows
            .iter()
            .filter(|r| r.message == m)
            .map(|r| r.clause)
            .collect();
        clauses.dedup();
        for c in clauses {
            let mut scored: Vec<(f32, &String)> = msg
                .row_facts
                .iter()
                .filter(|(i, _)| rows[*i].clause == c)
                .map(|(i, f)| (judge.probability(&rows[*i].x), f))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            // As `Judge::pick`: the sure ones when the best is sure, else those over the hedge.
            let top_sure = scored.first().is_some_and(|(p, _)| *p >= judge.threshold);
            for (p, f) in scored.iter().take(per_clause) {
                if *p >= judge.threshold {
                    sure.push(f);
                }
                if *p >= judge.hedge && (!top_sure || *p >= judge.threshold) {
                    any.push(f);
                }
            }
        }
        if msg.gold.is_empty() {
            o.unanswerable += 1;
            if !sure.is_empty() {
                o.unanswerable_answered += 1;
            } else if !any.is_empty() {
                o.unanswerable_closest += 1;
            }
        } else {
            o.answerable += 1;
            o.answered += usize::from(msg.gold.iter().all(|g| sure.contains(&g.as_str())));
            o.answered_or_closest +=
                usize::from(msg.gold.iter().all(|g| any.contains(&g.as_str())));
            o.refused += usize::from(any.is_empty());
        }
    }
    o
}

/// The threshold: the lowest keeping unanswerable messages answered within `max`. The hedge: the
/// highest at or below it that leaves at most `max_refused` of answerable messages with no fact.
fn choose_thresholds(
    judge: &mut Judge,
    per_clause: usize,
    rows: &[Row],
    messages: &[Message],
    keep: &dyn Fn(usize) -> bool,
    max: f64,
    max_refused: f64,
) {
    let mut best = 0.99;
    for step in (5..100).rev() {
        judge.threshold = step as f32 / 100.0;
        judge.hedge = judge.threshold;
        let o = outcome(judge, per_clause, rows, messages, keep);
        if (o.unanswerable_answered as f64) <= max * o.unanswerable as f64 {
            best = judge.threshold;
        } else {
            break;
        }
    }
    judge.threshold = best;
    judge.hedge = best;
    for step in (5..=(best * 100.0).round() as usize).rev() {
        judge.hedge = step as f32 / 100.0;
        let o = outcome(judge, per_clause, rows, messages, keep);
        if (o.refused as f64) <= max_refused * o.answerable as f64 {
            return;
        }
    }
}

/// What `collect` gathers over the tenants: the step's timings, every candidate's row, and
/// each message's gold facts.
#[derive(Default)]
struct Collected {
    timings: Vec<f64>,
    rows: Vec<Row>,
    messages: Vec<Message>,
}

async fn collect(
    channel: tonic::transport::Channel,
    dir: &Path,
    tenant_no: usize,
    candidates: usize,
    answer_encoder: &dyn closer_models::Embedder,
    out: &mut Collected,
) -> anyhow::Result<()> {
    let Collected {
        timings,
        rows,
        messages,
    } = out;
    let kb = dir.join("kb");
    let ty = std::fs::read_to_string(kb.join("tenant.yaml"))?;
    let tenant = yaml_field(&ty, "id").context("tenant.yaml: id")?;
    let names: Vec<String> = ["company", "names"]
        .iter()
        .filter_map(|k| yaml_field(&ty, k))
        .flat_map(|v| {
            v.replace(['[', ']'], "")
                .split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let set = IntentSet::from_yaml(&std::fs::read_to_string(kb.join("intents.yaml"))?)?;
    let kb_facts: Vec<closer_kb::Fact> = read_jsonl(&kb.join("facts.jsonl"))?;
    let vocab = Vocabulary::of_facts(&kb_facts, names.iter().map(String::as_str));
    let questions: Vec<Question> = read_jsonl(&dir.join("questions.jsonl"))?;
    let mut intents = pb::assistant_client::AssistantClient::new(channel.clone());
    let mut kbc = pb::knowledge_client::KnowledgeClient::new(channel);
    for q in questions.iter().filter(|q| q.kind != "statement") {
        let m = messages.len();
        let mut msg = Message {
            tenant: tenant_no,
            gold: if q.answerable {
                q.facts.clone()
            } else {
                vec![]
            },
            row_facts: vec![],
        };
        let classified = intents
            .classify(pb::ClassifyRequest {
                tenant: tenant.clone(),
                text: q.text.clone(),
            })
            .await
            .with_context(|| format!("{tenant} {}", q.id))?
            .into_inner();
        for (c, intent) in classified.intents.iter().enumerate() {
            let flags: &[IntentFlag] = set
                .get(&intent.name)
                .map(|d| d.flags.as_slice())
                .unwrap_or(&[]);
            let knowledge = flags.contains(&IntentFlag::Knowledge);
            let clause = closer_sales::turn::plan::context(
                &q.text,
                (intent.span_start as usize, intent.span_end as usize),
                classified.intents.len(),
            );
            let oos = closer_sales::turn::plan::searched_unprompted(&intent.name, flags, clause);
            // As `plan_for`: a statement out of scope is acknowledged, not looked up.
            if intent.name == OUT_OF_SCOPE && !closer_sales::turn::plan::is_question(clause) {
                continue;
            }
            if !(knowledge || oos) {
                continue;
            }
            // As `plan_for`: chat shorthand written out for retrieval and the judgement. (A
            // served turn judges each question of a clause on its own, `coverage::questions`,
            // with these weights; they are fitted on whole clauses: fitted on the questions, the
            // tuning tenants' replies came out two answers worse, 132 against 134 of 153.)
            let asked_as = closer_sales::coverage::spelled_out(clause);
            let hits = kbc
                .search(pb::SearchRequest {
                    tenant: tenant.clone(),
                    query: asked_as.clone(),
                    limit: candidates as u32,
                    intent: knowledge.then(|| intent.name.clone()),
                })
                .await?
                .into_inner()
                .facts;
            let facts: Vec<pb::Fact> = hits.iter().filter_map(|h| h.fact.clone()).collect();
            // The served step's cost starts here: the answer encoder's cosines (the clause, and
            // the facts' texts the first time they are seen), the tenant's vocabulary, every
            // candidate's features and the judgement (as `plan_for` does per clause).
            let t = std::time::Instant::now();
            let pairs: Vec<(&str, &str)> = facts
                .iter()
                .map(|f| (f.question.as_str(), f.answer.as_str()))
                .collect();
            let deep = answer_cosines(answer_encoder, &asked_as, &pairs)?;
            let cands: Vec<Candidate<'_>> = hits
                .iter()
                .zip(&facts)
                .zip(&deep)
                .map(|((h, f), d)| Candidate {
                    question: &f.question,
                    answer: &f.answer,
                    tags: &f.tags,
                    intents: &f.intents,
                    dense: h.dense,
                    bm25: h.bm25,
                    answer_encoder: Some(*d),
                })
                .collect();
            let asked = Clause {
                text: &asked_as,
                intent: &intent.name,
                out_of_scope: oos,
            };
            let v = Vocabulary::of_facts(&kb_facts, names.iter().map(String::as_str));
            let picked = Judge::builtin(true).pick(asked, &cands, &v, 2);
            std::hint::black_box(picked);
            timings.push(t.elapsed().as_secs_f64() * 1e3);
            for (i, f) in facts.iter().enumerate() {
                msg.row_facts.push((rows.len(), f.id.clone()));
                rows.push(Row {
                    text: format!("{} || {clause} [{}]", q.text, intent.name),
                    fact: f.id.clone(),
                    tenant: tenant_no,
                    message: m,
                    clause: c,
                    x: features(asked, &cands, i, &vocab),
                    y: q.answerable && q.facts.contains(&f.id),
                });
            }
        }
        messages.push(msg);
    }
    Ok(())
}

pub async fn run(args: AnswerabilityArgs) -> anyhow::Result<()> {
    // Lazy: the server may still be starting; wait_serving polls until it serves.
    let channel = tonic::transport::Endpoint::from_shared(args.server.clone())?.connect_lazy();
    crate::ui::wait_serving(channel.clone(), &args.server).await?;
    let paths =
        closer_models::source::ModelPaths::new(closer_models::source::ModelPaths::default_root());
    let mpnet = closer_models::source::EncoderModel::MpNet;
    let encoder = closer_models::cache::CachedEmbedder::new(
        std::sync::Arc::new(
            closer_models::encoder::TextEncoder::open(&paths, mpnet)
                .context("the answer encoder (closer models pull --intent-encoder mpnet)")?,
        ),
        16_384,
    );
    let mut got = Collected::default();
    for (t, dir) in args.tenants.iter().enumerate() {
        collect(channel.clone(), dir, t, args.candidates, &encoder, &mut got).await?;
    }
    let Collected {
        mut timings,
        rows,
        messages,
    } = got;
    if let Some(p) = &args.dump {
        let lines: Vec<String> = rows
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        std::fs::write(p, lines.join("\n") + "\n")?;
    }
    let positives = rows.iter().filter(|r| r.y).count();
    timings.sort_by(f64::total_cmp);
    eprintln!(
        "answerability step per clause (vocabulary, features, judgement; {} clauses): p50 {:.2} ms, p99 {:.2} ms",
        timings.len(),
        crate::metrics::percentile(&timings, 0.5),
        crate::metrics::percentile(&timings, 0.99)
    );
    let reachable = messages
        .iter()
        .filter(|m| {
            !m.gold.is_empty()
                && m.gold
                    .iter()
                    .all(|g| m.row_facts.iter().any(|(_, f)| f == g))
        })
        .count();
    eprintln!(
        "answerable messages whose every fact is among their clauses' candidates: {reachable}/{}",
        messages.iter().filter(|m| !m.gold.is_empty()).count()
    );
    eprintln!(
        "{} candidates ({positives} answer their clause) from {} messages",
        rows.len(),
        messages.len()
    );
    println!("## With the answer encoder ({})\n", args.out.display());
    train(&args, &rows, &messages, &args.out)?;
    // The judgement of a server without the answer encoder: the same rows, its features zeroed.
    let without: Vec<Row> = rows
        .iter()
        .map(|r| {
            let mut x = r.x;
            x[ANSWER_ENCODER_FEATURES..].fill(0.0);
            Row {
                text: r.text.clone(),
                fact: r.fact.clone(),
                x,
                ..*r
            }
        })
        .collect();
    let minilm = args.out.with_file_name(format!(
        "{}-minilm.json",
        args.out
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default()
    ));
    println!("\n## Without it ({})\n", minilm.display());
    train(&args, &without, &messages, &minilm)
}

/// Fits the judgement on `rows`, prints the leave-one-tenant-out table and writes the weights.
fn train(
    args: &AnswerabilityArgs,
    rows: &[Row],
    messages: &[Message],
    out: &Path,
) -> anyhow::Result<()> {
    let name = |t: usize| {
        args.tenants[t]
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    let new_judge = |weights: Vec<f32>, bias: f32| Judge {
        features: FEATURES.iter().map(|s| s.to_string()).collect(),
        weights,
        bias,
        threshold: 0.5,
        hedge: 0.5,
        trained_on: String::new(),
    };
    let row = |label: &str, o: &Outcome, j: &Judge| {
        println!(
            "| {label} | {}/{} | {}/{} | {}/{} | {}/{} | {}/{} | {:.2} / {:.2} |",
            o.answered,
            o.answerable,
            o.answered_or_closest,
            o.answerable,
            o.refused,
            o.answerable,
            o.unanswerable_answered,
            o.unanswerable,
            o.unanswerable_closest,
            o.unanswerable,
            j.threshold,
            j.hedge
        );
    };
    // Leave one tenant out: fit and choose the thresholds on the others, score the one left out.
    println!("| scored on | answerable answered | answered or closest | no fact | unanswerable answered | unanswerable given the closest + rep | threshold / hedge |\n|---|---|---|---|---|---|---|");
    for held in 0..args.tenants.len() {
        let train: Vec<&Row> = rows.iter().filter(|r| r.tenant != held).collect();
        let (weights, bias) = fit(&train, args.l2);
        let mut j = new_judge(weights, bias);
        let keep = |t: usize| t != held;
        choose_thresholds(
            &mut j,
            args.per_clause,
            rows,
            messages,
            &keep,
            args.max_unanswerable_answered,
            args.max_refused,
        );
        let o = outcome(&j, args.per_clause, rows, messages, &|t| t == held);
        row(&format!("{} (left out)", name(held)), &o, &j);
    }
    let all: Vec<&Row> = rows.iter().collect();
    let (weights, bias) = fit(&all, args.l2);
    let mut judge = new_judge(weights, bias);
    choose_thresholds(
        &mut judge,
        args.per_clause,
        rows,
        messages,
        &|_| true,
        args.max_unanswerable_answered,
        args.max_refused,
    );
    let o = outcome(&judge, args.per_clause, rows, messages, &|_| true);
    row("all tuning tenants (fitted on them)", &o, &judge);
    judge.trained_on = format!(
        "closer-eval answerability on {} (tuning tenants; {} candidates of {} messages), {}; threshold {:.2} / hedge {:.2}: answerable answered {}/{}, answered or closest {}/{}, unanswerable answered {}/{}",
        (0..args.tenants.len()).map(name).collect::<Vec<_>>().join(", "),
        rows.len(),
        messages.len(),
        chrono_date(),
        judge.threshold,
        judge.hedge,
        o.answered,
        o.answerable,
        o.answered_or_closest,
        o.answerable,
        o.unanswerable_answered,
        o.unanswerable
    );
    println!();
    for (f, w) in FEATURES.iter().zip(&judge.weights) {
        println!("  {f:>18} {w:+.3}");
    }
    println!("  {:>18} {:+.3}", "bias", judge.bias);
    std::fs::write(out, serde_json::to_string_pretty(&judge)? + "\n")?;
    eprintln!("weights written to {}", out.display());
    Ok(())
}

fn chrono_date() -> String {
    jiff::Zoned::now().date().to_string()
}
