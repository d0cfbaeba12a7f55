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
        let widget = self.eval(
            "[...(document.querySelector('#closer-widget')?.shadowRoot?.querySelectorAll('.msg, .slots') ?? [])].map(e => e.className + ': ' + e.textContent).join(' | ')",
        );
        panic!("{what}: timed out; the page shows {body}; the chat widget shows {widget}");
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

impl Browser {
    /// Saves a PNG of the page under `target/browser/` and prints where.
    fn screenshot(&mut self, name: &str) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64_decode(shot["data"].as_str().unwrap());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
    }
}

/// Standard base64 (what DevTools sends), decoded by hand.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').map(val).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &v)| n | (u32::from(v) << (18 - 6 * i)));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The widget's shadow root, in page JavaScript.
const W: &str = "document.querySelector('#closer-widget')?.shadowRoot";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_widget_answers_offers_slots_and_shows_a_rep_taking_over() {
    let data = demo_data();
    let yaml = closer_kb::tenant_dir(data.path(), "applinks").join("tenant.yaml");
    let mut y = std::fs::read_to_string(&yaml).unwrap();
    y.push_str("identity: optional\nidentity_secrets: [widget-secret-0123456789]\n");
    std::fs::write(&yaml, y).unwrap();
    let ts = spawn_in(real_models(), data).await;
    upload_playbook(&ts, &crate::sales::always_open_playbook())
        .await
        .unwrap();
    // The team's server signs its visitor (computed by Python, not by Closer's code).
    let hash = crate::sales::python(
        "import hashlib, hmac; print(hmac.new(b'widget-secret-0123456789', b'kim@acme.com', hashlib.sha256).hexdigest())",
    );
    let url = format!("{}/", ts.url);
    let mut page = tokio::task::spawn_blocking(move || {
        let mut page = Browser::open(&url);
        page.wait_for(&format!("!!{W}?.querySelector('.bubble')"), "the demo page's widget");
        // The demo page's visitor is only claimed; put a verified one on the same page.
        page.eval(&format!(
            "document.querySelector('#closer-widget').remove();
             const s = document.createElement('script');
             s.src = '/widget.js';
             Object.assign(s.dataset, {{ tenant: 'applinks', email: 'kim@acme.com', userHash: '{hash}' }});
             document.body.appendChild(s); true"
        ));
        page.wait_for(&format!("!!{W}?.querySelector('.bubble')"), "the verified visitor's widget");
        page.eval(&format!("{W}.querySelector('.bubble').click(); true"));
        let focused = page.eval(&format!("{W}.activeElement?.getAttribute('aria-label')"));
        assert_eq!(focused, json!("Your message"), "opening the chat focuses the input");
        page.eval(&format!(
            "const r = {W}; r.querySelector('input').value = {:?}; r.querySelector('form').requestSubmit(); true",
            SEED
        ));
        page.wait_for(
            &format!(
                "[...{W}.querySelectorAll('.bot')].some(b => ['$80', '$960', 'SOC 2 Type II', 'Chelsea Ward'].every(w => b.textContent.includes(w)))"
            ),
            "the seed question answered with the prices, SOC 2 Type II and the owner",
        );
        page.wait_for(
            &format!("{W}.querySelectorAll('.slots button').length >= 2"),
            "meeting slots as buttons",
        );
        page.screenshot("widget-answer");
        page.eval(&format!("{W}.querySelector('.slots button').click(); true"));
        page.wait_for(
            &format!("[...{W}.querySelectorAll('.note')].some(n => n.textContent.startsWith('Booked:'))"),
            "the picked slot booked",
        );
        page.screenshot("widget-booked");
        page
    })
    .await
    .unwrap();

    // A rep takes the conversation over: the widget shows it without the visitor writing.
    let lead = crate::sales::all_leads(&ts, "applinks")
        .await
        .into_iter()
        .find(|l| l.email.as_deref() == Some("kim@acme.com"))
        .expect("the widget's lead");
    assert_eq!(lead.identity, "verified");
    let mut conv = pb::conversations_client::ConversationsClient::connect(ts.url.clone())
        .await
        .unwrap();
    conv.take_over(pb::TakeOverRequest {
        tenant: "applinks".into(),
        conversation_id: lead.conversation_id.clone(),
        rep_id: "r-chelsea".into(),
    })
    .await
    .unwrap();
    conv.send_message(pb::RepMessageRequest {
        tenant: "applinks".into(),
        conversation_id: lead.conversation_id.clone(),
        rep_id: "r-chelsea".into(),
        text: "Hi Kim, Chelsea here!".into(),
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || {
        page.wait_for(
            &format!("[...{W}.querySelectorAll('.rep')].some(m => m.textContent.includes('Chelsea here'))"),
            "the rep's message",
        );
        page.screenshot("widget-rep");
        // A reload continues the same conversation: the rep who has it is announced again.
        page.call("Page.reload", json!({}));
        page.wait_for(&format!("!!{W}?.querySelector('.bubble')"), "the widget after a reload");
        page.eval(&format!("{W}.querySelector('.bubble').click(); true"));
        page.wait_for(
            &format!("[...{W}.querySelectorAll('.note')].some(n => n.textContent.includes('joined'))"),
            "the rep announced after the reload (resume token kept in the browser)",
        );
    })
    .await
    .unwrap();
}
