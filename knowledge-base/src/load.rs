//! Loading a tenant from the files a team already has:
//!
//! * `tenant.yaml` — `id`, `company`, optional `names` (brands the assistant may say);
//! * `facts.jsonl` — one fact per line: `id`, `kind`, `question`, `answer`, `tags`, `intents`;
//! * `accounts.csv` — `domain,name,owner_rep_id,segment,employees,country,target`;
//! * `reps.csv` — `id,name,email,team,region`;
//! * `intents.yaml` — the tenant's intent set (see `closer_models::intent::IntentSet`).
//!
//! Everything is validated before anything is written; an error names file, line and field.

use std::collections::HashSet;
use std::path::Path;

use crate::{
    create_index, io_err, tenant_dir, write_facts, Account, Error, Fact, Rep, Result, TenantProfile,
};

/// Longest answer accepted, in bytes.
pub const MAX_ANSWER_BYTES: usize = 4_000;

/// What a load wrote.
#[derive(Debug, Clone, Default)]
pub struct LoadSummary {
    pub tenant: String,
    pub facts: usize,
    pub accounts: usize,
    pub reps: usize,
    pub intents: usize,
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    String::from_utf8(bytes).map_err(|e| Error::Invalid {
        file: path.display().to_string(),
        line: 0,
        field: "encoding".into(),
        message: format!("not valid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
    })
}

pub fn read_profile(path: &Path) -> Result<TenantProfile> {
    let text = read_text(path)?;
    let p: TenantProfile = serde_yaml::from_str(&text).map_err(|e| Error::Invalid {
        file: path.display().to_string(),
        line: e.location().map(|l| l.line()).unwrap_or(0),
        field: "tenant".into(),
        message: e.to_string(),
    })?;
    validate_tenant_id(&p.id).map_err(|m| Error::Invalid {
        file: path.display().to_string(),
        line: 1,
        field: "id".into(),
        message: m,
    })?;
    Ok(p)
}

/// Tenant ids are folder names: keep them to a safe alphabet.
pub fn validate_tenant_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "tenant id {id:?}: use 1-64 letters, digits, '-' or '_'"
        ));
    }
    Ok(())
}

/// Parses `facts.jsonl`.
pub fn read_facts(path: &Path) -> Result<Vec<Fact>> {
    let file = path.display().to_string();
    let text = read_text(path)?;
    let mut facts = vec![];
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let inv = |field: &str, message: String| Error::Invalid {
            file: file.clone(),
            line: n,
            field: field.into(),
            message,
        };
        let fact: Fact = serde_json::from_str(line).map_err(|e| inv("json", e.to_string()))?;
        if fact.id.trim().is_empty() {
            return Err(inv("id", "empty".into()));
        }
        if !ids.insert(fact.id.clone()) {
            return Err(inv(
                "id",
                format!("duplicate id {:?} in this file", fact.id),
            ));
        }
        if fact.question.trim().is_empty() {
            return Err(inv("question", "empty".into()));
        }
        if fact.answer.trim().is_empty() {
            return Err(inv("answer", "empty".into()));
        }
        if fact.answer.len() > MAX_ANSWER_BYTES {
            return Err(inv(
                "answer",
                format!("{} bytes, more than {MAX_ANSWER_BYTES}", fact.answer.len()),
            ));
        }
        facts.push(fact);
    }
    Ok(facts)
}

fn read_csv<T: for<'de> serde::Deserialize<'de>>(path: &Path, required: &[&str]) -> Result<Vec<T>> {
    let file = path.display().to_string();
    let text = read_text(path)?;
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| Error::Invalid {
            file: file.clone(),
            line: 1,
            field: "header".into(),
            message: e.to_string(),
        })?
        .clone();
    for r in required {
        if !headers.iter().any(|h| h == *r) {
            return Err(Error::Invalid {
                file,
                line: 1,
                field: (*r).into(),
                message: "required column is missing".into(),
            });
        }
    }
    let mut out = vec![];
    for rec in rdr.deserialize::<T>() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            let field = match e.kind() {
                csv::ErrorKind::Deserialize { err, .. } => err
                    .field()
                    .and_then(|i| headers.get(i as usize))
                    .unwrap_or("row")
                    .to_string(),
                _ => "row".into(),
            };
            Error::Invalid {
                file: file.clone(),
                line,
                field,
                message: e.to_string(),
            }
        })?;
        out.push(rec);
    }
    Ok(out)
}

pub fn read_accounts(path: &Path) -> Result<Vec<Account>> {
    read_csv(path, &["domain", "name", "owner_rep_id"])
}

pub fn read_reps(path: &Path) -> Result<Vec<Rep>> {
    read_csv(path, &["id", "name"])
}

/// Loads a tenant from a source folder into `data_dir`, replacing what that tenant had.
/// Every file is parsed and checked before anything is written.
pub fn load_dir(src: &Path, data_dir: &Path, tenant_override: Option<&str>) -> Result<LoadSummary> {
    let mut profile = read_profile(&src.join("tenant.yaml"))?;
    if let Some(t) = tenant_override {
        validate_tenant_id(t).map_err(Error::BadInput)?;
        profile.id = t.to_string();
    }
    let facts = read_facts(&src.join("facts.jsonl"))?;
    let accounts = read_accounts(&src.join("accounts.csv"))?;
    let reps = read_reps(&src.join("reps.csv"))?;
    let intents_path = src.join("intents.yaml");
    let intents_text = read_text(&intents_path)?;
    let intents = closer_models::intent::IntentSet::from_yaml(&intents_text)
        .map_err(|e| Error::BadInput(format!("{}: {e}", intents_path.display())))?;
    let rep_ids: HashSet<&str> = reps.iter().map(|r| r.id.as_str()).collect();
    for (i, a) in accounts.iter().enumerate() {
        if !rep_ids.contains(a.owner_rep_id.as_str()) {
            return Err(Error::Invalid {
                file: src.join("accounts.csv").display().to_string(),
                line: i + 2,
                field: "owner_rep_id".into(),
                message: format!("no rep with id {:?} in reps.csv", a.owner_rep_id),
            });
        }
    }

    let dir = tenant_dir(data_dir, &profile.id);
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let index = create_index(&dir.join("index"))?;
    write_facts(&index, &facts, true)?;
    let write = |name: &str, bytes: Vec<u8>| -> Result<()> {
        let p = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| io_err(&p, e))
    };
    write("accounts.json", to_json(&accounts)?)?;
    write("reps.json", to_json(&reps)?)?;
    write("intents.yaml", intents_text.into_bytes())?;
    write(
        "tenant.yaml",
        serde_yaml::to_string(&profile)
            .map_err(|e| Error::BadInput(e.to_string()))?
            .into_bytes(),
    )?;
    Ok(LoadSummary {
        tenant: profile.id,
        facts: facts.len(),
        accounts: accounts.len(),
        reps: reps.len(),
        intents: intents.intents.len(),
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::BadInput(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fact_errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("facts.jsonl");
        std::fs::write(
            &p,
            "{\"id\":\"a\",\"kind\":\"faq\",\"question\":\"q\",\"answer\":\"x\"}\n{\"id\":\"b\",\"kind\":\"faq\",\"question\":\"q\",\"answer\":\" \"}\n",
        )
        .unwrap();
        let err = read_facts(&p).unwrap_err().to_string();
        assert!(err.contains("facts.jsonl: line 2: answer: empty"), "{err}");
        std::fs::write(&p, "{\"id\":\"a\",\"kind\":\"faq\",\"question\":\"q\",\"answer\":\"x\"}\n{\"id\":\"a\",\"kind\":\"faq\",\"question\":\"q\",\"answer\":\"y\"}\n").unwrap();
        assert!(read_facts(&p)
            .unwrap_err()
            .to_string()
            .contains("line 2: id: duplicate"));
        std::fs::write(&p, b"\xff\xfe").unwrap();
        assert!(read_facts(&p)
            .unwrap_err()
            .to_string()
            .contains("not valid UTF-8"));
    }

    #[test]
    fn csv_missing_column_and_bad_value_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("accounts.csv");
        std::fs::write(&p, "domain,name\nacme.com,Acme\n").unwrap();
        let err = read_accounts(&p).unwrap_err().to_string();
        assert!(
            err.contains("owner_rep_id: required column is missing"),
            "{err}"
        );
        std::fs::write(
            &p,
            "domain,name,owner_rep_id,employees\nacme.com,Acme,r1,many\n",
        )
        .unwrap();
        let err = read_accounts(&p).unwrap_err().to_string();
        assert!(err.contains("line 2: employees"), "{err}");
    }
}
