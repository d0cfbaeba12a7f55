//! Loading a tenant from the files a team already has:
//!
//! * `tenant.yaml` — `id`, `company`, optional `names` (brands the assistant may say);
//! * facts: any `.jsonl`, `.json`, `.csv` or `.md` file not named `accounts*`/`reps*` (see
//!   [`crate::formats`]);
//! * `accounts.csv` — `domain,name,owner_rep_id` and optional account columns;
//! * `reps.csv` — `id,name` and optional rep columns;
//! * `intents.yaml` — the tenant's intent set (see `closer_models::intent::IntentSet`).
//!
//! Everything is validated before anything is written; an error names file, line and field.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::disk::{read_json, tenant_dir, to_json, write_atomic};
use crate::error::{io_err, Error, Result};
use crate::formats::{
    content_from_name, parse_accounts, parse_facts, parse_reps, Content, Format, MAX_FILE_BYTES,
};
use crate::index::{create_index, open_or_upgrade, write_facts};
use crate::invisible::visible;
use crate::records::{Account, Fact, Rep, TenantProfile};

/// What a load wrote.
#[derive(Debug, Clone, Default)]
pub struct LoadSummary {
    pub tenant: String,
    pub facts: usize,
    pub accounts: usize,
    pub reps: usize,
    pub intents: usize,
    pub files: usize,
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Invalid {
        file: path.display().to_string(),
        line: 0,
        field: "encoding".into(),
        message: format!("not valid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
    })?;
    Ok(visible(&text).into_owned())
}

pub fn read_profile(path: &Path) -> Result<TenantProfile> {
    let text = read_text(path)?;
    let p: TenantProfile = serde_norway::from_str(&text).map_err(|e| Error::Invalid {
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
    if !p.identity.is_off() && p.identity_secrets.iter().all(|s| s.0.len() < 16) {
        return Err(Error::Invalid {
            file: path.display().to_string(),
            line: text
                .lines()
                .position(|l| l.starts_with("identity"))
                .map_or(0, |n| n + 1),
            field: "identity_secrets".into(),
            message: "identity: optional or required needs a secret of at least 16 characters"
                .into(),
        });
    }
    if p.identity_secrets.len() > 2 {
        return Err(Error::Invalid {
            file: path.display().to_string(),
            line: 0,
            field: "identity_secrets".into(),
            message: "at most two (the current one and the one being rotated out)".into(),
        });
    }
    for (i, o) in p.allowed_origins.iter().enumerate() {
        crate::records::validate_origin(o).map_err(|m| Error::Invalid {
            file: path.display().to_string(),
            line: text
                .lines()
                .position(|l| l.contains(o.as_str()))
                .map_or(0, |n| n + 1),
            field: format!("allowed_origins[{i}]"),
            message: m,
        })?;
    }
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

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.len() as usize > MAX_FILE_BYTES {
        return Err(Error::Invalid {
            file: path.display().to_string(),
            line: 0,
            field: "file".into(),
            message: format!(
                "{} bytes, more than the limit of {MAX_FILE_BYTES}",
                meta.len()
            ),
        });
    }
    std::fs::read(path).map_err(|e| io_err(path, e))
}

/// Parses a facts file in the format its extension names.
pub fn read_facts(path: &Path) -> Result<Vec<Fact>> {
    let name = path.display().to_string();
    let format = Format::from_name(&name).ok_or_else(|| Error::Invalid {
        file: name.clone(),
        line: 0,
        field: "file".into(),
        message: "unknown format: use .jsonl, .json, .csv or .md".into(),
    })?;
    parse_facts(&name, format, &read_bytes(path)?)
}

pub fn read_accounts(path: &Path) -> Result<Vec<Account>> {
    parse_accounts(&path.display().to_string(), &read_bytes(path)?)
}

pub fn read_reps(path: &Path) -> Result<Vec<Rep>> {
    parse_reps(&path.display().to_string(), &read_bytes(path)?)
}

/// The parsed content of some files, checked as one batch (no duplicate fact ids across files).
#[derive(Debug, Default)]
pub struct Files {
    pub facts: Vec<Fact>,
    pub accounts: Vec<Account>,
    pub reps: Vec<Rep>,
    pub files: usize,
    fact_files: HashMap<String, String>,
}

impl Files {
    /// Parses files by name: `accounts*.csv`, `reps*.csv`, anything else facts.
    pub fn read(paths: &[std::path::PathBuf], progress: &mut dyn FnMut(&Path)) -> Result<Self> {
        let mut out = Files::default();
        for p in paths {
            progress(p);
            out.add(&p.display().to_string(), &read_bytes(p)?)?;
        }
        Ok(out)
    }

    /// Parses one file's bytes, named as the file would be.
    pub fn add(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        match content_from_name(name) {
            Content::Accounts => self.accounts.extend(parse_accounts(name, bytes)?),
            Content::Reps => self.reps.extend(parse_reps(name, bytes)?),
            Content::Facts => {
                let format = Format::from_name(name).ok_or_else(|| Error::Invalid {
                    file: name.to_string(),
                    line: 0,
                    field: "file_name".into(),
                    message: "unknown format: use .jsonl, .json, .csv or .md".into(),
                })?;
                for f in parse_facts(name, format, bytes)? {
                    if let Some(other) = self.fact_files.insert(f.id.clone(), name.to_string()) {
                        return Err(Error::Invalid {
                            file: name.to_string(),
                            line: 0,
                            field: "id".into(),
                            message: format!("duplicate id {:?}: also in {other}", f.id),
                        });
                    }
                    self.facts.push(f);
                }
            }
        }
        self.files += 1;
        Ok(())
    }
}

/// The data files of a tenant folder: every `.jsonl`, `.json`, `.csv` and `.md` file.
pub fn data_files(src: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut v = vec![];
    for e in std::fs::read_dir(src).map_err(|e| io_err(src, e))? {
        let p = e.map_err(|e| io_err(src, e))?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if p.is_file() && Format::from_name(&name).is_some() && !name.starts_with("readme") {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Upserts files into an existing tenant's folder: facts in one index commit (all or nothing),
/// accounts and reps merged by domain/id and written atomically. Vectors of new facts are
/// computed when the server next opens the tenant (a running server takes `Knowledge.Ingest`).
pub fn load_files(
    paths: &[std::path::PathBuf],
    data_dir: &Path,
    tenant: &str,
    progress: &mut dyn FnMut(&Path),
) -> Result<LoadSummary> {
    validate_tenant_id(tenant).map_err(Error::BadInput)?;
    let dir = tenant_dir(data_dir, tenant);
    if !dir.join("tenant.yaml").is_file() {
        return Err(Error::UnknownTenant(tenant.to_string()));
    }
    let files = Files::read(paths, progress)?;
    let mut reps: Vec<Rep> = read_json(&dir.join("reps.json"))?;
    let mut accounts: Vec<Account> = read_json(&dir.join("accounts.json"))?;
    for r in &files.reps {
        match reps.iter_mut().find(|x| x.id == r.id) {
            Some(x) => *x = r.clone(),
            None => reps.push(r.clone()),
        }
    }
    check_owners(&files.accounts, &reps, "accounts")?;
    for a in &files.accounts {
        match accounts.iter_mut().find(|x| x.domain == a.domain) {
            Some(x) => *x = a.clone(),
            None => accounts.push(a.clone()),
        }
    }
    if !files.reps.is_empty() {
        write_atomic(&dir.join("reps.json"), &to_json(&reps)?)?;
    }
    if !files.accounts.is_empty() {
        write_atomic(&dir.join("accounts.json"), &to_json(&accounts)?)?;
    }
    if !files.facts.is_empty() {
        let index = open_or_upgrade(&dir.join("index"))?;
        write_facts(&index, &files.facts, &[], false)?;
    }
    Ok(LoadSummary {
        tenant: tenant.to_string(),
        facts: files.facts.len(),
        accounts: files.accounts.len(),
        reps: files.reps.len(),
        intents: 0,
        files: files.files,
    })
}

fn check_owners(accounts: &[Account], reps: &[Rep], file: &str) -> Result<()> {
    let rep_ids: HashSet<&str> = reps.iter().map(|r| r.id.as_str()).collect();
    for (i, a) in accounts.iter().enumerate() {
        if !rep_ids.contains(a.owner_rep_id.as_str()) {
            return Err(Error::Invalid {
                file: file.into(),
                line: i + 2,
                field: "owner_rep_id".into(),
                message: format!("no rep with id {:?}", a.owner_rep_id),
            });
        }
    }
    Ok(())
}

/// Loads a tenant from a source folder into `data_dir`, replacing what that tenant had.
/// Every file is parsed and checked before anything is written.
pub fn load_dir(src: &Path, data_dir: &Path, tenant_override: Option<&str>) -> Result<LoadSummary> {
    let mut profile = read_profile(&src.join("tenant.yaml"))?;
    if let Some(t) = tenant_override {
        validate_tenant_id(t).map_err(Error::BadInput)?;
        profile.id = t.to_string();
    }
    let paths = data_files(src)?;
    let files = Files::read(&paths, &mut |_| {})?;
    let intents_path = src.join("intents.yaml");
    let intents_text = read_text(&intents_path)?;
    let intents = closer_models::intent::IntentSet::from_yaml(&intents_text)
        .map_err(|e| Error::BadInput(format!("{}: {e}", intents_path.display())))?;
    check_owners(
        &files.accounts,
        &files.reps,
        &src.join("accounts.csv").display().to_string(),
    )?;
    let Files {
        facts,
        accounts,
        reps,
        files,
        ..
    } = files;

    let dir = tenant_dir(data_dir, &profile.id);
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let index = create_index(&dir.join("index"))?;
    write_facts(&index, &facts, &[], true)?;
    let write =
        |name: &str, bytes: Vec<u8>| -> Result<()> { write_atomic(&dir.join(name), &bytes) };
    write("accounts.json", to_json(&accounts)?)?;
    write("reps.json", to_json(&reps)?)?;
    write("intents.yaml", intents_text.into_bytes())?;
    // The playbook is checked by the server (it needs the intents and reps); copied as is.
    let playbook = src.join("playbook.yaml");
    if playbook.is_file() {
        write("playbook.yaml", read_text(&playbook)?.into_bytes())?;
    } else if dir.join("playbook.yaml").exists() {
        let p = dir.join("playbook.yaml");
        std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
    }
    write(
        "tenant.yaml",
        serde_norway::to_string(&profile)
            .map_err(|e| Error::BadInput(e.to_string()))?
            .into_bytes(),
    )?;
    Ok(LoadSummary {
        tenant: profile.id,
        facts: facts.len(),
        accounts: accounts.len(),
        reps: reps.len(),
        intents: intents.intents.len(),
        files,
    })
}

/// Creates a tenant with no facts, accounts, reps or intents (for benchmarks and tools that
/// fill it through [`crate::KnowledgeBase::apply`]); fails when the tenant exists.
pub fn create_empty(data_dir: &Path, profile: &TenantProfile) -> Result<()> {
    validate_tenant_id(&profile.id).map_err(Error::BadInput)?;
    let dir = tenant_dir(data_dir, &profile.id);
    if dir.join("tenant.yaml").exists() {
        return Err(Error::BadInput(format!("tenant {:?} exists", profile.id)));
    }
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    create_index(&dir.join("index"))?;
    write_atomic(&dir.join("accounts.json"), b"[]")?;
    write_atomic(&dir.join("reps.json"), b"[]")?;
    write_atomic(
        &dir.join("tenant.yaml"),
        serde_norway::to_string(profile)
            .map_err(|e| Error::BadInput(e.to_string()))?
            .as_bytes(),
    )
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
    fn allowed_origins_are_checked_and_a_bad_one_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tenant.yaml");
        std::fs::write(
            &p,
            "id: t\ncompany: T\nallowed_origins:\n  - https://www.example.com\n  - http://localhost:8080\n",
        )
        .unwrap();
        assert_eq!(read_profile(&p).unwrap().allowed_origins.len(), 2);
        for bad in [
            "https://www.example.com/",
            "www.example.com",
            "https://WWW.example.com",
            "https://example.com:99999",
            "https://example.com/chat",
        ] {
            std::fs::write(
                &p,
                format!("id: t\ncompany: T\nallowed_origins:\n  - https://ok.example\n  - {bad}\n"),
            )
            .unwrap();
            let err = read_profile(&p).unwrap_err().to_string();
            assert!(
                err.contains("line 5") && err.contains("allowed_origins[1]"),
                "{bad}: {err}"
            );
        }
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
