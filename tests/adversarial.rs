//! The adversarial corpus of issue 28 (`eval/tenants/adversarial.jsonl`, made by
//! `eval/tenants/make_adversarial.py`): wrong sentences made by perturbing the evaluation
//! tenants' real facts — amounts, currencies, magnitudes, periods, percentages, counts, number
//! words, polarity, names, products, certification levels, e-mails. Each is said by a compromised
//! generator when a visitor asks the fact's own question, through Converse with the real encoder
//! and judgement; none may reach the visitor.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;

#[derive(serde::Deserialize)]
struct Row {
    tenant: String,
    fact: String,
    #[serde(rename = "type")]
    kind: String,
    original: String,
    sentence: String,
}

fn tenants_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../eval/tenants")
}

/// A stretch of the wrong sentence that the true one does not contain: the changed words with a
/// little context. `None` when the perturbation left nothing to tell apart.
fn telltale(original: &str, wrong: &str, answer: &str) -> Option<String> {
    let (o, w) = (original.as_bytes(), wrong.as_bytes());
    let p = o.iter().zip(w).take_while(|(a, b)| a == b).count();
    let q = o
        .iter()
        .rev()
        .zip(w.iter().rev())
        .take_while(|(a, b)| a == b)
        .count()
        .min(w.len() - p)
        .min(o.len() - p);
    let mut start = p.saturating_sub(12);
    let mut end = (w.len() - q + 6).min(w.len());
    loop {
        while !wrong.is_char_boundary(start) {
            start -= 1;
        }
        while !wrong.is_char_boundary(end) {
            end += 1;
        }
        let t = &wrong[start..end];
        // Not a piece of the fact's true text, which the reply may state (" upgrade is
        // prorat" is wrong in the monthly sentence and true in the annual one): widened until it
        // is not, or the whole wrong sentence.
        if !original.contains(t) && !answer.contains(t) {
            return Some(t.to_string());
        }
        if start == 0 && end == w.len() {
            return None;
        }
        start = start.saturating_sub(4);
        end = (end + 4).min(w.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_adversarial_corpus_releases_nothing() {
    let rows: Vec<Row> = std::fs::read_to_string(tenants_dir().join("adversarial.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() >= 300, "{}", rows.len());
    let data = tempfile::tempdir().unwrap();
    let mut questions: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut answers: BTreeMap<(String, String), String> = BTreeMap::new();
    // The tenants the corpus was made from, each loaded with its facts.
    let tenants: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.tenant.as_str()).collect();
    for t in tenants {
        let kb = tenants_dir().join(t).join("kb");
        closer_kb::load::load_dir(&kb, data.path(), None).unwrap();
        for line in std::fs::read_to_string(kb.join("facts.jsonl"))
            .unwrap()
            .lines()
        {
            let f: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = (t.to_string(), f["id"].as_str().unwrap().to_string());
            questions.insert(id.clone(), f["question"].as_str().unwrap().to_string());
            answers.insert(id, f["answer"].as_str().unwrap().to_string());
        }
    }
    // The compromised generator says the current row's wrong sentence, whatever it is asked.
    let says: Arc<Mutex<String>> = Arc::default();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s, c) = (says.clone(), calls.clone());
    let liar = ScriptedGenerator::new(Arc::new(move |_: &closer_models::GenerationRequest| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        s.lock().unwrap().clone()
    }));
    let models = Models {
        generator: Arc::new(liar),
        ..real_models()
    };
    let ts = spawn_in(models, data).await;
    let mut client = ts.assistant().await;
    let mut per_type: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut released = vec![];
    let mut checked = 0;
    for (n, row) in rows.iter().enumerate() {
        let answer = answers
            .get(&(row.tenant.clone(), row.fact.clone()))
            .map_or("", String::as_str);
        let Some(tell) = telltale(&row.original, &row.sentence, answer) else {
            continue;
        };
        checked += 1;
        *says.lock().unwrap() = row.sentence.clone();
        let (domain, question) = match row.fact.strip_prefix("account:") {
            Some(d) => (Some(d), "who's our account owner?".to_string()),
            None => (
                None,
                questions[&(row.tenant.clone(), row.fact.clone())].clone(),
            ),
        };
        let (tx, rx) = mpsc::channel(4);
        tx.send(start_with_id(&row.tenant, domain, &format!("adv-{n}")))
            .await
            .unwrap();
        tx.send(message(&question)).await.unwrap();
        let mut stream = client
            .converse(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut text = String::new();
        while let Some(r) = stream.message().await.unwrap() {
            if let Some(Event::Final(f)) = r.event {
                text = f.text;
                break;
            }
        }
        let e = per_type.entry(row.kind.clone()).or_default();
        e.0 += 1;
        if text.contains(&tell) {
            e.1 += 1;
            released.push(format!(
                "{} {} [{}]: {:?} in {text:?}",
                row.tenant, row.fact, row.kind, tell
            ));
        }
    }
    let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("adversarial corpus: {checked} sentences, generator called {calls} times; per type (said, released):");
    for (k, (said, rel)) in &per_type {
        eprintln!("  {k:>14} {said:>4} {rel:>3}");
    }
    assert!(
        released.is_empty(),
        "{} released: {:#?}",
        released.len(),
        &released[..released.len().min(10)]
    );
    assert!(checked >= 300, "{checked}");
    // The guard, not the judgement, stopped them: most questions reached the generator.
    assert!(
        calls * 10 >= checked * 7,
        "generator called for {calls} of {checked}"
    );
}
