//! `closer-eval answers`: the evaluation tenants' visitor messages (`eval/tenants/<t>/questions.jsonl`)
//! through a running server's Converse, scored on the reply text the visitor reads:
//! - answered correctly: an answerable question whose reply holds every `must_contain` (any of a
//!   nested list), none of `must_not_contain`, and no claim the tenant's authored text does not back;
//! - false refusal: an answerable question met with "I don't have that information" or a hand-off;
//! - unanswerable refused or handed off: an unanswerable question met with a refusal or a hand-off
//!   and no forbidden string;
//! - statements (greetings, thanks, buying signals) answered without a refusal;
//! - replies with a claim no fact backs, by this crate's own oracle (`oracle.rs`), which shares no
//!   code with the served guard; a `must_not_contain` hit counts as such a claim too.
//!
//! Also per question: its word overlap with the best-matching fact (content words of the message
//! found in the fact's question and answer), reported as a median per tenant.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::grounding::{ask, Reply};
use crate::oracle::Backing;

#[derive(Args, Clone)]
pub struct AnswersArgs {
    /// The running server (its data dir holds the tenants, loaded with `closer kb load`).
    #[arg(long)]
    server: String,
    /// Tenant folders (each with `kb/` and `questions.jsonl`).
    #[arg(long = "tenant", required = true)]
    tenants: Vec<PathBuf>,
    /// Tenants whose figures are reported but never used to choose a setting.
    #[arg(long, default_values = ["zohobooks", "dropboxsign", "helpscout", "mailchimp", "netlify"])]
    locked: Vec<String>,
    #[arg(long, default_value = "answers-report")]
    out: PathBuf,
    /// Only the first N messages of each tenant (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
}

/// One visitor message of a tenant's `questions.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Question {
    pub id: String,
    pub text: String,
    pub answerable: bool,
    #[serde(default)]
    pub facts: Vec<String>,
    #[serde(default)]
    must_contain: Vec<AnyOf>,
    #[serde(default)]
    must_not_contain: Vec<String>,
    #[serde(default = "question_kind")]
    pub kind: String,
    #[serde(default)]
    domain: Option<String>,
}

fn question_kind() -> String {
    "question".into()
}

/// One string, or a list of alternatives.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum AnyOf {
    One(String),
    Any(Vec<String>),
}

impl AnyOf {
    fn options(&self) -> Vec<&str> {
        match self {
            AnyOf::One(s) => vec![s.as_str()],
            AnyOf::Any(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct FactLine {
    id: String,
    #[serde(default)]
    question: String,
    answer: String,
}

#[derive(Debug, Clone, Serialize)]
struct Outcome {
    id: String,
    text: String,
    kind: String,
    answerable: bool,
    reply: String,
    cited: Vec<String>,
    handoff: bool,
    refused: bool,
    /// The reply gave the closest documented answer and offered a rep to confirm.
    closest: bool,
    correct: bool,
    missing: Vec<String>,
    forbidden: Vec<String>,
    unbacked: Vec<String>,
    overlap: f64,
    latency_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct TenantReport {
    tenant: String,
    locked: bool,
    messages: usize,
    answerable: usize,
    answered_correctly: usize,
    /// Answerable, and the reply says "I don't have that information" (for some part of it).
    false_refusals: usize,
    /// Answerable, answered correctly, and a rep offered to confirm.
    answered_with_rep: usize,
    unanswerable: usize,
    /// Unanswerable, and the reply refuses or hands off, with no forbidden string or unbacked claim.
    unanswerable_refused: usize,
    /// Of those: the closest documented answer given, with a rep.
    unanswerable_closest: usize,
    statements: usize,
    statements_fitting: usize,
    /// Replies (any message) with a claim the oracle finds no authored text for.
    replies_with_unbacked_claim: usize,
    /// Questions whose reply holds a string the question's author marked wrong.
    replies_with_forbidden: usize,
    overlap_median: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    outcomes: Vec<Outcome>,
}

const STOP: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "is", "are", "was", "be", "do", "does", "did", "can",
    "could", "would", "will", "i", "we", "you", "u", "ur", "your", "our", "my", "me", "it", "its",
    "to", "of", "in", "on", "for", "with", "at", "by", "from", "if", "what", "how", "whats", "who",
    "when", "where", "which", "why", "there", "this", "that", "any", "have", "has", "get", "got",
    "so", "just", "like", "im", "it's", "i'm", "pls", "please", "hey", "hi", "about", "up", "as",
    "not", "no", "yes", "ok", "too", "also", "they", "them", "their", "need", "want", "much",
    "many", "per", "a", "us", "all", "some", "then", "than", "still",
];

fn content_words(s: &str) -> HashSet<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\''))
        .filter(|w| w.len() > 1 && !STOP.contains(w))
        .map(|w| w.strip_suffix('s').unwrap_or(w).to_string())
        .collect()
}

/// The share of the message's content words found in the fact's question and answer.
fn overlap(message: &str, fact: &FactLine) -> f64 {
    let m = content_words(message);
    if m.is_empty() {
        return 0.0;
    }
    let f = content_words(&format!("{} {}", fact.question, fact.answer));
    m.iter().filter(|w| f.contains(*w)).count() as f64 / m.len() as f64
}

pub(crate) fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(line)
                .with_context(|| format!("{}: line {}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// `key: value` of a top-level field in `tenant.yaml`.
pub(crate) fn yaml_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
}

/// What the tenant authored that a reply may state: fact answers, accounts, reps, company names,
/// and the server's fixed lines. Not tags, not a fact's question, not the visitor's message.
fn backing(dir: &Path, facts: &[FactLine]) -> anyhow::Result<Backing> {
    let kb = dir.join("kb");
    let mut texts: Vec<String> = facts.iter().map(|f| f.answer.clone()).collect();
    for file in ["accounts.csv", "reps.csv"] {
        let p = kb.join(file);
        if p.exists() {
            texts.push(std::fs::read_to_string(&p)?.replace(',', " , "));
        }
    }
    let tenant = std::fs::read_to_string(kb.join("tenant.yaml"))?;
    for key in ["company", "names"] {
        if let Some(v) = yaml_field(&tenant, key) {
            texts.push(v.replace([',', '[', ']'], " "));
        }
    }
    texts.extend(
        closer_sales::turn::fixed_lines()
            .into_iter()
            .map(str::to_string),
    );
    texts.push(closer_sales::turn::meeting::MEETING_OFFER.to_string());
    Ok(Backing::new(texts.iter().map(String::as_str)))
}

/// The reply (lowercase) without the service's own fixed lines ("I don't have that
/// information…", "If that doesn't fully answer your question…"), so that a required "not" or
/// "n't" is found only in what was said about the question, not in a refusal or a hedge.
fn without_canned_lines(lower: &str) -> String {
    use closer_sales::turn::plan;
    let mut said = lower.to_string();
    for line in [
        plan::DONT_KNOW,
        plan::HANDOFF_ACK,
        plan::NOTED,
        plan::BUYING_NOTED,
        plan::WELCOME,
        plan::CLOSEST_INTRO,
        plan::CLOSEST,
        plan::UNKNOWN_ACCOUNT,
    ] {
        said = said.replace(&line.to_lowercase(), " ");
    }
    said
}

fn refused(reply: &Reply) -> bool {
    let t = reply.text.to_lowercase();
    t.contains("don't have that information") || t.contains("couldn't find")
}

async fn run_tenant(
    channel: tonic::transport::Channel,
    dir: &Path,
    locked: bool,
    limit: usize,
    run: u128,
) -> anyhow::Result<TenantReport> {
    let tenant_yaml = std::fs::read_to_string(dir.join("kb/tenant.yaml"))
        .with_context(|| dir.join("kb/tenant.yaml").display().to_string())?;
    let tenant = yaml_field(&tenant_yaml, "id")
        .with_context(|| format!("{}: no `id`", dir.join("kb/tenant.yaml").display()))?;
    let facts: Vec<FactLine> = read_jsonl(&dir.join("kb/facts.jsonl"))?;
    let mut questions: Vec<Question> = read_jsonl(&dir.join("questions.jsonl"))?;
    for q in &questions {
        for f in &q.facts {
            anyhow::ensure!(
                facts.iter().any(|x| &x.id == f) || f.starts_with("account:"),
                "{}: question {}: unknown fact `{f}`",
                dir.display(),
                q.id
            );
        }
    }
    if limit > 0 {
        questions.truncate(limit);
    }
    let backing = backing(dir, &facts)?;
    let bar = crate::ui::bar(questions.len(), &tenant);
    let mut outcomes = vec![];
    for q in &questions {
        let reply = ask(
            channel.clone(),
            &tenant,
            &q.text,
            q.domain.clone(),
            format!("answers-{run}-{tenant}-{}", q.id),
        )
        .await
        .with_context(|| format!("{tenant} {}: {}", q.id, q.text))?;
        let lower = reply.text.to_lowercase();
        let said = without_canned_lines(&lower);
        let missing: Vec<String> = q
            .must_contain
            .iter()
            .filter(|m| !m.options().iter().any(|o| said.contains(&o.to_lowercase())))
            .map(|m| m.options().join(" | "))
            .collect();
        let forbidden: Vec<String> = q
            .must_not_contain
            .iter()
            .filter(|m| lower.contains(&m.to_lowercase()))
            .cloned()
            .collect();
        // Meeting times come from the reps' calendars: a claim is backed by either source.
        let slots = Backing::new(reply.proposed.iter().map(String::as_str));
        let by_slots = slots.unbacked(&reply.text);
        let unbacked: Vec<String> = backing
            .unbacked(&reply.text)
            .into_iter()
            .filter(|c| reply.proposed.is_empty() || by_slots.contains(c))
            .collect();
        let is_refused = refused(&reply);
        let correct =
            q.answerable && missing.is_empty() && forbidden.is_empty() && unbacked.is_empty();
        let overlap = facts
            .iter()
            .map(|f| overlap(&q.text, f))
            .fold(0.0, f64::max);
        outcomes.push(Outcome {
            id: q.id.clone(),
            text: q.text.clone(),
            kind: q.kind.clone(),
            answerable: q.answerable,
            reply: reply.text.clone(),
            cited: reply.cited.clone(),
            handoff: reply.handoff,
            refused: is_refused,
            closest: reply.text.contains(closer_sales::turn::plan::CLOSEST),
            correct,
            missing,
            forbidden,
            unbacked,
            overlap,
            latency_ms: reply.ms,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let is_statement = |o: &Outcome| o.kind == "statement";
    let mut lat: Vec<f64> = outcomes.iter().map(|o| o.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let mut ov: Vec<f64> = outcomes
        .iter()
        .filter(|o| !is_statement(o))
        .map(|o| o.overlap)
        .collect();
    ov.sort_by(f64::total_cmp);
    Ok(TenantReport {
        tenant,
        locked,
        messages: outcomes.len(),
        answerable: count(&|o| o.answerable),
        answered_correctly: count(&|o| o.correct),
        false_refusals: count(&|o| o.answerable && o.refused),
        answered_with_rep: count(&|o| o.correct && o.handoff),
        unanswerable: count(&|o| !o.answerable && !is_statement(o)),
        unanswerable_refused: count(&|o| {
            !o.answerable
                && !is_statement(o)
                && (o.refused || o.handoff)
                && o.forbidden.is_empty()
                && o.unbacked.is_empty()
        }),
        unanswerable_closest: count(&|o| {
            !o.answerable
                && !is_statement(o)
                && o.closest
                && o.forbidden.is_empty()
                && o.unbacked.is_empty()
        }),
        statements: count(&|o| is_statement(o)),
        statements_fitting: count(&|o| {
            is_statement(o) && !o.refused && o.forbidden.is_empty() && o.unbacked.is_empty()
        }),
        replies_with_unbacked_claim: count(&|o| !o.unbacked.is_empty()),
        replies_with_forbidden: count(&|o| !is_statement(o) && !o.forbidden.is_empty()),
        overlap_median: crate::metrics::percentile(&ov, 0.5),
        latency_ms_p50: crate::metrics::percentile(&lat, 0.5),
        latency_ms_p99: crate::metrics::percentile(&lat, 0.99),
        outcomes,
    })
}

fn pct(a: usize, b: usize) -> String {
    if b == 0 {
        "–".into()
    } else {
        format!("{:.1} % ({a}/{b})", a as f64 * 100.0 / b as f64)
    }
}

fn markdown(reports: &[TenantReport]) -> String {
    let mut md = String::from(
        "| tenant | answered correctly (of which with a rep offered) | false refusals | unanswerable refused / handed off (of which closest fact + rep) | statements answered | replies with a claim no fact backs (oracle) | replies with a string marked wrong | overlap median | p50 / p99 |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let _ = writeln!(
            md,
            "| {}{} | {} ({}) | {} | {} ({}) | {} | {} | {} | {:.2} | {:.0} / {:.0} ms |",
            r.tenant,
            if r.locked { " (locked)" } else { "" },
            pct(r.answered_correctly, r.answerable),
            r.answered_with_rep,
            pct(r.false_refusals, r.answerable),
            pct(r.unanswerable_refused, r.unanswerable),
            r.unanswerable_closest,
            pct(r.statements_fitting, r.statements),
            r.replies_with_unbacked_claim,
            r.replies_with_forbidden,
            r.overlap_median,
            r.latency_ms_p50,
            r.latency_ms_p99
        );
    }
    md
}

pub async fn run(args: AnswersArgs) -> anyhow::Result<()> {
    // Lazy: the server may still be starting; wait_serving polls until it serves.
    let channel = tonic::transport::Endpoint::from_shared(args.server.clone())?.connect_lazy();
    crate::ui::wait_serving(channel.clone(), &args.server).await?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut reports = vec![];
    for dir in &args.tenants {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let locked = args.locked.contains(&name);
        reports.push(run_tenant(channel.clone(), dir, locked, args.limit, run).await?);
    }
    let md = markdown(&reports);
    println!("{md}");
    let mut full = format!(
        "# Answer evaluation\n\nServer: `{}`; tenants: {}\n\n{md}\n",
        args.server,
        args.tenants
            .iter()
            .map(|t| format!("`{}`", t.display()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for r in &reports {
        let misses: Vec<&Outcome> = r
            .outcomes
            .iter()
            .filter(|o| {
                (o.answerable && !o.correct)
                    || !o.unbacked.is_empty()
                    || !o.forbidden.is_empty()
                    || (!o.answerable && o.kind != "statement" && !o.refused && !o.handoff)
                    || (o.kind == "statement" && o.refused)
            })
            .collect();
        if misses.is_empty() {
            continue;
        }
        let _ = writeln!(
            full,
            "\n## {}: misses\n\n| id | message | missing | forbidden | unbacked | reply |\n|---|---|---|---|---|---|"
            , r.tenant
        );
        for o in misses {
            let _ = writeln!(
                full,
                "| {} | {} | {} | {} | {} | {} |",
                o.id,
                o.text.replace('|', "/"),
                o.missing.join("; ").replace('|', "/"),
                o.forbidden.join("; "),
                o.unbacked.join("; "),
                o.reply.replace('|', "/").replace('\n', " ")
            );
        }
    }
    crate::ui::write_report(&args.out, &reports, &full)
}

#[cfg(test)]
mod tests {
    use super::without_canned_lines;

    #[test]
    fn a_refusal_or_a_hedge_does_not_supply_a_required_negation() {
        let refusal = closer_sales::turn::plan::DONT_KNOW.to_lowercase();
        assert!(refusal.contains("n't"));
        assert!(!without_canned_lines(&refusal).contains("n't"));
        let hedged = format!(
            "{} annual plans are refunded. {}",
            closer_sales::turn::plan::CLOSEST_INTRO,
            closer_sales::turn::plan::CLOSEST
        )
        .to_lowercase();
        let said = without_canned_lines(&hedged);
        assert!(!said.contains("n't") && !said.contains("not"), "{said}");
        assert!(said.contains("annual plans are refunded"));
        let answer = "no, annual plans are not refunded. i don't have that information, but i can \
                      connect you with a rep who does.";
        assert!(without_canned_lines(answer).contains(" not "));
    }
}
