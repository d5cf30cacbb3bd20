//! The agent console in a real browser: headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`; `.ci/run` installs
//! them). Screenshots land in `target/console/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::app::{status, text_message, TestApp};
use support::TestDb;
use switchboard::config::{ApiToken, Role, Secret, TemplateSettings};
use switchboard::db::schema::messages;

const TOKEN: &str = "console-test-token";
/// A named agent's token (role `agent`: the conversations, no operations).
const ANA_TOKEN: &str = "t-ana";
const WAIT: Duration = Duration::from_secs(20);

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts chromedriver on a free port and waits for its "started" line.
    fn start() -> Self {
        let port = support::free_port();
        let mut child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            // Its own process group: the browsers it starts go with it, even
            // when a failed test never closes its session.
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian package chromium-driver; .ci/run installs it)");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("started successfully") => break,
                Some(Ok(_)) => continue,
                _ => panic!("chromedriver ended before it was ready"),
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn browser(&self, profile: &std::path::Path) -> Client {
        let caps = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // The machine has no network: nothing in the background may try it.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-extensions",
                    "--disable-default-apps", "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        // Plain HTTP to the local driver: no TLS stack needed.
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session starts")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ChromeDriver's own command for the browser console's log.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// Waits until `expr` (JavaScript) is truthy in the page.
async fn until(c: &Client, what: &str, expr: &str) {
    let deadline = Instant::now() + WAIT;
    let script = format!("return !!({expr});");
    loop {
        if Client::execute(c, &script, vec![]).await.unwrap() == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let shot = c.screenshot().await.unwrap_or_default();
            let _ = std::fs::write(artifacts().join("failure.png"), shot);
            panic!("timed out waiting for: {what} ({expr})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn js(c: &Client, expr: &str) -> Value {
    Client::execute(c, &format!("return {expr};"), vec![]).await.unwrap()
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn save_screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(artifacts().join(name), png).unwrap();
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

/// Waits until the agent message `text` shows as sent.
async fn until_sent(c: &Client, what: &str, text: &str) {
    let expr = format!(
        "[...document.querySelectorAll('#messages .msg.agent')].some(e => e.querySelector('.body').textContent === {text:?} \
         && e.querySelector('.status').textContent.includes('sent'))"
    );
    until(c, what, &expr).await;
}

/// Picks `value` in the select `id`, as a user would (a change event).
/// Clicks what `css` matches. A live region (the conversation list, the
/// messages) may replace the element between the lookup and the click —
/// a stale element — so it is looked up again until `WAIT`.
async fn click(c: &Client, css: &str) {
    use fantoccini::error::{CmdError, ErrorStatus};
    let deadline = Instant::now() + WAIT;
    loop {
        match c.find(Locator::Css(css)).await.unwrap().click().await {
            Ok(()) => return,
            Err(CmdError::Standard(e))
                if e.error == ErrorStatus::StaleElementReference && Instant::now() < deadline => {}
            Err(e) => panic!("clicking {css}: {e}"),
        }
    }
}

async fn choose(c: &Client, id: &str, value: &str) {
    let script = format!(
        "const f = document.getElementById({id:?}); f.value = {value:?}; f.dispatchEvent(new Event('change'));"
    );
    Client::execute(c, &script, vec![]).await.unwrap();
}

/// Severe entries of the browser's console (errors, failed loads).
async fn console_errors(c: &Client) -> Vec<String> {
    let log = c
        .issue_cmd(BrowserLog)
        .await
        .expect("chromedriver gives the browser log");
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The browser's errors but the 401s of signing in (a wrong token, or the
/// sign-in page's first look before a token): those are by design.
/// An app whose API needs the token and whose webhooks are signed; `more`
/// edits the rest.
async fn console_app(db: &TestDb, more: impl FnOnce(&mut switchboard::config::Settings)) -> TestApp {
    TestApp::spawn(
        db,
        |s| {
            s.api.tokens = vec![Secret::new(TOKEN).into()];
            s.whatsapp.app_secret = Some(Secret::new(support::app::APP_SECRET));
            more(s);
        },
        None,
    )
    .await
}

/// Opens the console and signs in with the token.
async fn sign_in(c: &Client, app: &TestApp) {
    sign_in_with(c, app, TOKEN).await;
}

/// Opens the console and signs in with `token`.
async fn sign_in_with(c: &Client, app: &TestApp, token: &str) {
    c.goto(&app.url("/console")).await.unwrap();
    until(c, "the sign-in form", "!document.getElementById('login').hidden").await;
    type_into(c, "#token", token).await;
    click(c, "#login-button").await;
}

async fn errors_past_sign_in(c: &Client) -> Vec<String> {
    console_errors(c)
        .await
        .into_iter()
        .filter(|e| !e.contains("401"))
        .collect()
}

#[actix_web::test]
async fn the_console_lists_answers_hands_off_and_tracks_delivery_live() {
    let db = TestDb::migrated().await;
    let app = console_app(&db, |_| {}).await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = driver.browser(profile.path()).await;

    // A wrong token is refused with a clear message.
    c.goto(&app.url("/console")).await.unwrap();
    until(&c, "the sign-in form", "!document.getElementById('login').hidden").await;
    type_into(&c, "#token", "not-the-token").await;
    click(&c, "#login-button").await;
    until(
        &c,
        "the refusal",
        "document.getElementById('login-error').textContent.includes('refused (401)')",
    )
    .await;
    assert_eq!(js(&c, "document.getElementById('app').hidden").await, true);

    // The right token opens the console.
    type_into(&c, "#token", TOKEN).await;
    click(&c, "#login-button").await;
    until(&c, "the console", "!document.getElementById('app').hidden").await;
    until(
        &c,
        "the live stream",
        "document.getElementById('live').textContent === 'live'",
    )
    .await;
    until(
        &c,
        "the operations panel",
        "document.getElementById('ops-ready').textContent === 'ready'",
    )
    .await;

    // A signed webhook creates a conversation; the list shows it without a reload.
    let phone = "5215550001234";
    let r = app
        .deliver_value(vec![text_message(phone, "wamid.console.1", "hola")], vec![])
        .await;
    assert_eq!(r.status(), 200);
    let row = format!("li.conv[data-phone='{phone}']");
    until(
        &c,
        "the new conversation in the list",
        &format!("document.querySelector(\"{row}\")"),
    )
    .await;
    let row_text = js(&c, &format!("document.querySelector(\"{row}\").textContent")).await;
    let row_text = row_text.as_str().unwrap();
    assert!(row_text.contains("Ana Pérez"), "contact name shown: {row_text}");
    assert!(
        row_text.contains("+52*******1234"),
        "the phone is masked in the list: {row_text}"
    );
    assert!(!row_text.contains(phone), "no clear phone in the list: {row_text}");
    until(
        &c,
        "an unread count",
        &format!("document.querySelector(\"{row} .unread\").textContent === '1'"),
    )
    .await;
    save_screenshot(&c, "list.png").await;

    // Opening it shows the history with origins.
    click(&c, &row).await;
    until(
        &c,
        "the customer's message",
        "[...document.querySelectorAll('#messages .msg.user .body')].some(e => e.textContent === 'hola')",
    )
    .await;
    until(&c, "the bot's reply", "document.querySelector('#messages .msg.bot')").await;
    assert_eq!(
        js(&c, "document.getElementById('conv-phone').textContent").await,
        format!("+{phone}")
    );

    // Take over: the bot stops answering.
    click(&c, "#handoff-button").await;
    until(
        &c,
        "the hand-off",
        "document.getElementById('conv-handoff').textContent === 'an agent has it'",
    )
    .await;

    // Filters and search narrow the list (the conversation is the agent's now).
    let rows = "document.querySelectorAll('#conversations li.conv').length";
    choose(&c, "filter-handoff", "false").await;
    until(&c, "no bot conversations", &format!("{rows} === 0")).await;
    choose(&c, "filter-handoff", "true").await;
    until(&c, "the agent's conversation", &format!("{rows} === 1")).await;
    type_into(&c, "#search", "999").await;
    until(&c, "no match", "!document.getElementById('list-empty').hidden").await;
    type_into(&c, "#search", "+52155").await;
    until(&c, "the match", &format!("{rows} === 1")).await;

    // A reply shows "sending" at once, then "sent" when the 201 arrives;
    // every status the pending bubble showed is recorded in the page.
    Client::execute(
        &c,
        "window.__seen = []; new MutationObserver(() => { \
           for (const s of document.querySelectorAll('#messages .pending .status')) { \
             if (window.__seen[window.__seen.length - 1] !== s.dataset.status) window.__seen.push(s.dataset.status); } \
         }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});",
        vec![],
    )
    .await
    .unwrap();
    let reply = "Hola Ana, soy Marta. Reviso tu reporte.";
    type_into(&c, "#reply-text", reply).await;
    c.find(Locator::Css("#reply-text"))
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap(); // Enter
    until_sent(&c, "the agent's message, sent", reply).await;
    let seen = js(&c, "window.__seen").await;
    assert_eq!(seen[0], "sending", "shown as sending first: {seen}");
    assert!(seen.as_array().unwrap().contains(&json!("sent")), "then sent: {seen}");
    assert_eq!(js(&c, "document.getElementById('reply-text').value").await, "");

    let mut conn = db.admin().await;
    let stored: Vec<(String, String)> = messages::table
        .filter(messages::phone.eq(phone))
        .filter(messages::origin.eq("agent"))
        .select((messages::body, messages::direction))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored,
        vec![(reply.to_string(), "out".to_string())],
        "the reply is in the database"
    );

    // With an agent on it, a new customer message gets no bot reply.
    let r = app
        .deliver_value(vec![text_message(phone, "wamid.console.2", "gracias")], vec![])
        .await;
    assert_eq!(r.status(), 200);
    until(
        &c,
        "the customer's second message, live",
        "[...document.querySelectorAll('#messages .msg.user .body')].some(e => e.textContent === 'gracias')",
    )
    .await;
    let last_origin = js(
        &c,
        "[...document.querySelectorAll('#messages .msg')].pop().classList.contains('user')",
    )
    .await;
    assert_eq!(last_origin, true, "no bot reply after the take-over");
    let gracias: i64 = messages::table
        .filter(messages::phone.eq(phone))
        .filter(messages::body.eq("gracias"))
        .select(messages::id)
        .first(&mut conn)
        .await
        .unwrap();
    let after: i64 = messages::table
        .filter(messages::phone.eq(phone))
        .filter(messages::origin.eq("bot"))
        .filter(messages::id.gt(gracias))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(after, 0, "the bot stayed quiet");

    // A delivery-status webhook turns the agent's message "read", live.
    app.engine.outbox().wait_drained().await;
    let wamid: String = messages::table
        .filter(messages::phone.eq(phone))
        .filter(messages::origin.eq("agent"))
        .order(messages::id)
        .select(messages::provider_message_id.assume_not_null())
        .first(&mut conn)
        .await
        .unwrap();
    let r = app.deliver_value(vec![], vec![status(&wamid, phone, "read")]).await;
    assert_eq!(r.status(), 200);
    until(
        &c,
        "the read receipt",
        "[...document.querySelectorAll('#messages .msg.agent .status')].some(s => s.dataset.status === 'read')",
    )
    .await;
    save_screenshot(&c, "conversation.png").await;

    // Hand back to the bot: the bot answers again.
    click(&c, "#handoff-button").await;
    until(
        &c,
        "the hand-back",
        "document.getElementById('conv-handoff').textContent === 'the bot has it'",
    )
    .await;

    // A send that fails shows the reason and a retry; the retry reuses the
    // idempotency key, so the message is stored once.
    Client::execute(
        &c,
        "const real = window.fetch; let failed = false; \
         window.fetch = (url, opts) => { \
           if (!failed && opts && opts.method === 'POST' && String(url).endsWith('/messages')) { \
             failed = true; return Promise.reject(new TypeError('network down')); } \
           return real(url, opts); };",
        vec![],
    )
    .await
    .unwrap();
    let second = "¿Sigues ahí?";
    type_into(&c, "#reply-text", second).await;
    click(&c, "#send").await;
    until(
        &c,
        "the failure and its reason",
        "(s => s && s.dataset.status === 'failed' && s.textContent.includes('cannot be reached'))\
         (document.querySelector('#messages .pending .status'))",
    )
    .await;
    click(&c, "#messages .pending .retry").await;
    until_sent(&c, "the retried message, sent", second).await;
    let copies: i64 = messages::table
        .filter(messages::phone.eq(phone))
        .filter(messages::body.eq(second))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(copies, 1, "stored once");

    // Phone width: one pane at a time; Esc goes back to the list.
    c.set_window_size(390, 844).await.unwrap();
    until(
        &c,
        "the list hidden behind the open conversation",
        "getComputedStyle(document.getElementById('sidebar')).display === 'none' \
         && getComputedStyle(document.getElementById('conversation')).display !== 'none' \
         && getComputedStyle(document.getElementById('ops')).display === 'none'",
    )
    .await;
    save_screenshot(&c, "phone-conversation.png").await;
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("\u{E00C}")
        .await
        .unwrap(); // Esc
    until(
        &c,
        "the list again",
        "document.getElementById('conversation').hidden && getComputedStyle(document.getElementById('sidebar')).display !== 'none'",
    )
    .await;
    save_screenshot(&c, "phone-list.png").await;

    // The operations panel shows the server's own figures.
    c.set_window_size(1280, 800).await.unwrap();
    until(
        &c,
        "breaker states",
        "document.querySelectorAll('#ops-breakers li').length >= 2",
    )
    .await;
    until(
        &c,
        "an ack p99",
        "document.getElementById('ops-p99').textContent.endsWith(' ms')",
    )
    .await;
    assert_eq!(js(&c, "document.getElementById('ops-dead').textContent").await, "0");

    // No console errors but the one 401 the wrong token caused.
    let errors = errors_past_sign_in(&c).await;
    assert!(errors.is_empty(), "browser console errors: {errors:?}");

    c.close().await.unwrap();
    app.stop().await;
}

#[actix_web::test]
async fn the_console_assets_forbid_foreign_scripts_and_work_without_a_token() {
    let db = TestDb::migrated().await;
    let app = TestApp::spawn(&db, |_| {}, None).await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
    }
    let page = app
        .client
        .get(app.url("/console"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no outside assets"
    );

    // A server without tokens: the console opens directly.
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = driver.browser(profile.path()).await;
    c.goto(&app.url("/console")).await.unwrap();
    until(
        &c,
        "the console without a token",
        "!document.getElementById('app').hidden",
    )
    .await;
    until(&c, "the empty list", "!document.getElementById('list-empty').hidden").await;
    let errors = console_errors(&c).await;
    assert!(errors.is_empty(), "browser console errors: {errors:?}");
    c.close().await.unwrap();
    app.stop().await;
}

/// A 1×1 PNG: what the fake Graph API serves as the customer's photo.
const PIXEL: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0, 0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d,
    0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

#[actix_web::test]
async fn the_console_shows_a_username_contact_and_the_photo_it_sent() {
    let db = TestDb::migrated().await;
    let fake = switchboard::load::fake_graph::FakeGraph::start().unwrap();
    fake.add_media("9001", PIXEL, "image/png");
    let whatsapp = fake.settings();
    let media_dir = support::scratch_dir("console-media");
    let app = TestApp::spawn(
        &db,
        |s| {
            s.whatsapp = whatsapp;
            s.api.tokens = vec![Secret::new(TOKEN).into()];
            s.media.dir = media_dir;
            s.media.poll_interval_ms = 20;
        },
        None,
    )
    .await;
    // A username user (no phone) sends a photo.
    const BSUID: &str = "US.13491208655302741918";
    let photo = json!({"from_user_id": BSUID, "id": "wamid.console.photo", "timestamp": chrono::Utc::now().timestamp().to_string(),
        "type": "image", "image": {"id": "9001", "mime_type": "image/png", "caption": "la etiqueta"}});
    let value = json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "1098765432"},
        "contacts": [{"profile": {"name": "Ana", "username": "@ana.reportes"}, "user_id": BSUID}],
        "messages": [photo]});
    let body = json!({"object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"value": value, "field": "messages"}]}]});
    let r = app.deliver(&serde_json::to_vec(&body).unwrap(), None).await;
    assert_eq!(r.status(), 200);
    app.engine.wait_idle().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (messages, _) = app.engine.recent_messages(BSUID, 10).await.unwrap();
        let media = messages[0].media.as_ref().expect("the photo's job");
        if media.status == "downloaded" {
            break;
        }
        assert!(Instant::now() < deadline, "never downloaded: {media:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = driver.browser(profile.path()).await;
    sign_in(&c, &app).await;
    let row = format!("li.conv[data-phone='{BSUID}']");
    until(&c, "the conversation", &format!("document.querySelector(\"{row}\")")).await;
    let row_text = js(&c, &format!("document.querySelector(\"{row}\").textContent")).await;
    let row_text = row_text.as_str().unwrap();
    assert!(row_text.contains("Ana") && row_text.contains("US.…1918"), "{row_text}");
    assert!(!row_text.contains(BSUID), "the BSUID is masked in the list: {row_text}");

    click(&c, &row).await;
    until(
        &c,
        "the name and username",
        "document.getElementById('conv-name').textContent === 'Ana · @ana.reportes'",
    )
    .await;
    // The photo (downloaded before the browser started) is offered; opened, it shows.
    let button = "#messages .msg.user .media-open";
    until(&c, "the photo's button", &format!("document.querySelector('{button}')")).await;
    click(&c, button).await;
    until(
        &c,
        "the photo",
        "(() => { const i = document.querySelector('#messages .media-image'); return i && i.complete && i.naturalWidth === 1; })()",
    )
    .await;
    save_screenshot(&c, "photo.png").await;
    let errors = errors_past_sign_in(&c).await;
    assert!(errors.is_empty(), "browser console errors: {errors:?}");
    assert_eq!(fake.media_served().len(), 1, "fetched once from the Graph API");
    c.close().await.unwrap();
    app.stop().await;
}

#[actix_web::test]
async fn the_console_shows_the_closed_window_and_sends_a_template() {
    let db = TestDb::migrated().await;
    let app = console_app(&db, |s| {
        s.whatsapp.templates = vec![TemplateSettings {
            name: "recordatorio".into(),
            language: "es".into(),
            parameters: 1,
        }];
    })
    .await;
    // The customer wrote 25 hours ago: the 24-hour window has closed.
    let phone = "5215512345678";
    let mut m = text_message(phone, "wamid.console.late", "hola");
    m["timestamp"] = json!((chrono::Utc::now() - chrono::TimeDelta::hours(25))
        .timestamp()
        .to_string());
    let r = app.deliver_value(vec![m], vec![]).await;
    assert_eq!(r.status(), 200);
    app.engine.wait_idle().await;

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = driver.browser(profile.path()).await;
    sign_in(&c, &app).await;
    let row = format!("li.conv[data-phone='{phone}']");
    until(&c, "the conversation", &format!("document.querySelector(\"{row}\")")).await;
    click(&c, &row).await;

    // The header says the window is closed; free text is off, templates on.
    until(
        &c,
        "the closed window",
        "document.getElementById('conv-window').dataset.open === 'false'",
    )
    .await;
    let label = js(&c, "document.getElementById('conv-window').textContent").await;
    assert!(
        label.as_str().unwrap().contains("templates only"),
        "the window's label: {label}"
    );
    assert_eq!(js(&c, "document.getElementById('reply-text').disabled").await, true);
    assert_eq!(js(&c, "document.getElementById('send').disabled").await, true);
    until(
        &c,
        "the bot's reply, not sent",
        "[...document.querySelectorAll('#messages .msg.bot .status')].some(s => s.dataset.status === 'skipped' \
         && s.textContent.includes('outside the 24-hour window'))",
    )
    .await;
    until(
        &c,
        "the template form",
        "!document.getElementById('template-form').hidden \
         && getComputedStyle(document.getElementById('template-form')).display !== 'none'",
    )
    .await;
    assert_eq!(
        js(
            &c,
            "[...document.querySelectorAll('#template-name option')].map(o => o.textContent)"
        )
        .await,
        json!(["recordatorio (es)"])
    );
    assert_eq!(
        js(
            &c,
            "document.querySelectorAll('#template-params .template-param').length"
        )
        .await,
        1,
        "one input for its one parameter"
    );

    // Filled in and sent, the template shows in the conversation.
    type_into(&c, "#template-params .template-param", "martes").await;
    click(&c, "#template-send").await;
    until(
        &c,
        "the template in the conversation",
        "[...document.querySelectorAll('#messages .msg.out .body')].some(e => e.textContent.startsWith('[plantilla recordatorio'))",
    )
    .await;
    assert_eq!(js(&c, "document.getElementById('conv-error').textContent").await, "");
    let bodies = js(
        &c,
        "[...document.querySelectorAll('#messages .msg.out .body')].map(e => e.textContent)",
    )
    .await;
    assert!(
        bodies
            .as_array()
            .unwrap()
            .contains(&json!("[plantilla recordatorio (es): martes]")),
        "the template's transcript: {bodies}"
    );
    save_screenshot(&c, "template.png").await;
    let errors = errors_past_sign_in(&c).await;
    assert!(errors.is_empty(), "browser console errors: {errors:?}");
    c.close().await.unwrap();
    app.stop().await;
}

/// An agent's message through the API, written with `token` (and its name).
async fn agent_says(app: &TestApp, token: &str, phone: &str, text: &str) {
    let r = app
        .client
        .post(app.url(&format!("/api/conversations/{phone}/messages")))
        .bearer_auth(token)
        .json(&json!({"text": text}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{text}");
}

/// The ids of `phone`'s stored messages, oldest first.
async fn message_ids(db: &TestDb, phone: &str) -> Vec<i64> {
    messages::table
        .filter(messages::phone.eq(phone))
        .order(messages::id.asc())
        .select(messages::id)
        .load(&mut db.admin().await)
        .await
        .unwrap()
}

/// JavaScript: whether a message with body `text` is in the list.
fn shown(text: &str) -> String {
    format!("[...document.querySelectorAll('#messages .msg .body')].some(e => e.textContent === {text:?})")
}

/// JavaScript: the origin label of the agent message with body `text`.
fn origin_of(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages .msg.agent')].find(e => e.querySelector('.body').textContent === {text:?})\
         .querySelector('.origin')"
    )
}

#[actix_web::test]
async fn the_console_pages_back_through_history_and_names_the_agents() {
    let db = TestDb::migrated().await;
    let app = console_app(&db, |s| {
        s.api.tokens = vec![
            ApiToken::named("Ana", ANA_TOKEN, Role::Agent),
            Secret::new(TOKEN).into(),
        ];
    })
    .await;
    // More than a page (50) of history: customer messages with the bot's
    // replies, Ana's messages early and late, one of an anonymous token.
    let phone = "5215598760001";
    let first = "hola, les escribo por primera vez";
    let ana_early = "Hola, soy Ana; reviso tu caso.";
    let ana_late = "Ana otra vez: ya casi queda.";
    let anonymous = "Mensaje del equipo.";
    app.say(phone, "wamid.page.0", first).await;
    agent_says(&app, ANA_TOKEN, phone, ana_early).await;
    for i in 1..28 {
        app.say(phone, &format!("wamid.page.{i}"), "hola").await;
    }
    agent_says(&app, ANA_TOKEN, phone, ana_late).await;
    agent_says(&app, TOKEN, phone, anonymous).await;
    app.say(phone, "wamid.page.last", "gracias").await;
    let ids = message_ids(&db, phone).await;
    assert!(
        (51..=100).contains(&ids.len()),
        "one page back holds the rest: {} messages",
        ids.len()
    );

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = driver.browser(profile.path()).await;
    sign_in_with(&c, &app, ANA_TOKEN).await;
    until(&c, "the console", "!document.getElementById('app').hidden").await;

    // An agent's token: a note where the operations panel was.
    until(
        &c,
        "the note instead of the operations panel",
        "!document.getElementById('ops-note').hidden && document.getElementById('ops-toggle').hidden \
         && document.getElementById('ops').hidden \
         && getComputedStyle(document.getElementById('ops')).display === 'none'",
    )
    .await;
    assert_eq!(
        js(&c, "document.getElementById('ops-note').textContent").await,
        "Operations: admins only"
    );

    let row = format!("li.conv[data-phone='{phone}']");
    until(&c, "the conversation", &format!("document.querySelector(\"{row}\")")).await;
    click(&c, &row).await;

    // The newest page: the latest messages, the first one a page back.
    until(&c, "the newest customer message", &shown("gracias")).await;
    until(&c, "the anonymous agent's message", &shown(anonymous)).await;
    until(
        &c,
        "the mark of older messages",
        "document.getElementById('history-mark').dataset.older === 'true'",
    )
    .await;
    assert_eq!(js(&c, &shown(first)).await, false, "the first message is a page back");

    // Ana's message names her; the anonymous token's says "agent" alone.
    assert_eq!(
        js(
            &c,
            &format!("{}.querySelector('.author').textContent", origin_of(ana_late))
        )
        .await,
        "Ana"
    );
    assert_eq!(js(&c, &format!("{}.textContent", origin_of(anonymous))).await, "agent");

    // Scrolled to the top, the page before loads above; the message that
    // was first stays where it was on screen.
    Client::execute(
        &c,
        "const ol = document.getElementById('messages'); \
         const m = ol.querySelector('.msg'); \
         window.__anchor = m.dataset.id; \
         ol.scrollTop = 0; \
         window.__anchorTop = m.getBoundingClientRect().top;",
        vec![],
    )
    .await
    .unwrap();
    until(&c, "the first message, a page back", &shown(first)).await;
    until(
        &c,
        "the start of the conversation",
        "document.getElementById('history-mark').dataset.older === 'false' \
         && document.getElementById('history-mark').textContent === 'start of the conversation'",
    )
    .await;
    let moved = js(
        &c,
        "Math.abs(document.querySelector('#messages .msg[data-id=\"' + window.__anchor + '\"]')\
         .getBoundingClientRect().top - window.__anchorTop)",
    )
    .await;
    assert!(
        moved.as_f64().unwrap() < 3.0,
        "the message looked at stayed in place: moved {moved} px"
    );
    let in_list = "[...document.querySelectorAll('#messages .msg')].map(e => Number(e.dataset.id))";
    assert_eq!(js(&c, in_list).await, json!(ids), "every message once, in order");
    // The older page names Ana too.
    assert_eq!(
        js(
            &c,
            &format!("{}.querySelector('.author').textContent", origin_of(ana_early))
        )
        .await,
        "Ana"
    );
    save_screenshot(&c, "history.png").await;

    // Ana takes over: the header names her.
    click(&c, "#handoff-button").await;
    until(
        &c,
        "Ana's hand-off",
        "document.getElementById('conv-handoff').textContent === 'Ana has it'",
    )
    .await;
    // A live refresh (a new customer message) keeps the older page.
    app.say(phone, "wamid.page.after", "sigo aquí").await;
    until(&c, "the new message, live", &shown("sigo aquí")).await;
    assert_eq!(js(&c, &shown(first)).await, true, "the older page is kept");
    let ids = message_ids(&db, phone).await;
    assert_eq!(js(&c, in_list).await, json!(ids), "every message once, in order");

    // Handed back, the header says who did.
    click(&c, "#handoff-button").await;
    until(
        &c,
        "Ana's hand-back",
        "document.getElementById('conv-handoff').textContent === 'the bot has it (handed back by Ana)'",
    )
    .await;

    // No console errors, but the one 403 that told the console this token
    // is an agent's (the browser logs every refused load; the panel then
    // asks no more).
    let (forbidden, others): (Vec<String>, Vec<String>) = errors_past_sign_in(&c)
        .await
        .into_iter()
        .partition(|e| e.contains("/api/admin/overview") && e.contains("403"));
    assert!(others.is_empty(), "browser console errors: {others:?}");
    assert!(
        forbidden.len() <= 1,
        "the operations figures asked for once: {forbidden:?}"
    );
    c.close().await.unwrap();
    app.stop().await;
}
