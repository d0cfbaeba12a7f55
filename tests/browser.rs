//! The leaderboard web page in a real headless Chromium, driven over the DevTools protocol on
//! a pipe (`--remote-debugging-pipe`: requests on fd 3, replies on fd 4, NUL-terminated JSON).
//! Chromium must be installed (`.ci/run` installs it); set `CLOSER_CHROMIUM` to pick a binary.

use command_fds::{CommandFdExt, FdMapping};
use std::io::{BufRead, BufReader, Write};

use serde_json::{json, Value};

use super::*;
use crate::sales::{leads, sales_form, upload_playbook};

fn chromium() -> String {
    if let Ok(p) = std::env::var("CLOSER_CHROMIUM") {
        return p;
    }
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()));
        if found {
            return name.to_string();
        }
    }
    panic!(
        "the browser test needs Chromium: install it (apt-get install chromium) or set CLOSER_CHROMIUM"
    );
}

/// A headless browser and one page in it.
struct Browser {
    child: std::process::Child,
    to: std::io::PipeWriter,
    from: BufReader<std::io::PipeReader>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Self {
        let (chrome_reads, to) = std::io::pipe().unwrap();
        let (from, chrome_writes) = std::io::pipe().unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(chromium());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=1920,1080",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        cmd.fd_mappings(vec![
            FdMapping {
                parent_fd: chrome_reads.into(),
                child_fd: 3,
            },
            FdMapping {
                parent_fd: chrome_writes.into(),
                child_fd: 4,
            },
        ])
        .unwrap();
        let child = cmd.spawn().expect("start chromium");
        // The parent's copies of the child's ends close with `cmd`, so a dead browser reads
        // as end of file.
        drop(cmd);
        let mut b = Browser {
            child,
            to,
            from: BufReader::new(from),
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({ "url": url }));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let mut buf = vec![];
            let n = self.from.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "chromium closed the pipe");
            buf.pop();
            let reply: Value = serde_json::from_slice(&buf).unwrap();
            if reply["id"] == json!(id) {
                if let Some(e) = reply.get("error") {
                    panic!("{method}: {e}");
                }
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; its JSON value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is `true` (up to 20 s); panics with `what` and the page's state.
    fn wait_for(&mut self, expr: &str, what: &str) {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < until {
            if self.eval(expr) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let body = self.eval("document.body.innerText");
        panic!("{what}: timed out; the page shows {body}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn form(ts: &TestServer, key: &str, email: &str) {
    let r = leads(ts)
        .await
        .qualify_form(sales_form(key, email))
        .await
        .unwrap()
        .into_inner();
    assert!(r.lead.unwrap().score >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaderboard_page_updates_live_and_celebrates_a_new_leader() {
    let ts = spawn(fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    upload_playbook(&ts, &crate::sales::always_open_playbook())
        .await
        .unwrap();
    form(&ts, "a-1", "kim@acme.com").await;
    form(&ts, "a-2", "lee@acme.com").await;

    let url = format!("{}/leaderboard?tenant=applinks&period=today", ts.url);
    let mut page = tokio::task::spawn_blocking(move || {
        let mut page = Browser::open(&url);
        page.wait_for(
            "document.getElementById('status').textContent === 'live' && \
             document.querySelector('#rows tr')?.dataset.rep === 'r-chelsea'",
            "Chelsea leads with 2 CQLs",
        );
        let rows = page.eval("document.querySelectorAll('#rows tr').length");
        assert_eq!(rows, json!(3), "every rep of the tenant is on the board");
        let title = page.eval("document.getElementById('title').textContent");
        assert_eq!(title, json!("Leaderboard · Today"));
        // Readable across the room: big type on a 1080p screen.
        let px =
            page.eval("parseFloat(getComputedStyle(document.querySelector('#rows td')).fontSize)");
        assert!(px.as_f64().unwrap() >= 48.0, "row text is {px} px");
        let shown = page.eval("getComputedStyle(document.getElementById('celebration')).display");
        assert_eq!(shown, json!("none"), "no celebration on the first board");
        page
    })
    .await
    .unwrap();

    // Priya overtakes with three CQLs: the page updates by itself and celebrates.
    for i in 0..3 {
        form(&ts, &format!("p-{i}"), &format!("v{i}@initech.co.uk")).await;
    }
    let bad_url = format!("{}/leaderboard?tenant=nobody", ts.url);
    let page = tokio::task::spawn_blocking(move || {
        page.wait_for(
            "document.querySelector('#rows tr')?.dataset.rep === 'r-priya'",
            "Priya is #1",
        );
        page.wait_for(
            "getComputedStyle(document.getElementById('celebration')).display !== 'none' && \
             document.getElementById('celebration').textContent.includes('New #1: Priya Raman')",
            "the celebration shows",
        );
        let cqls = page.eval("document.querySelector('#rows tr').children[3].textContent");
        assert_eq!(cqls, json!("3"));
        // A bad address says what is wrong instead of an empty board.
        page.call("Page.navigate", json!({ "url": bad_url }));
        page.wait_for(
            "!document.getElementById('problem').hidden",
            "a problem line for an unknown tenant",
        );
        page
    })
    .await
    .unwrap();
    drop(page);
}
