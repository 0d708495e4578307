//! The web console in a real browser: Debian's headless Chromium, driven over WebDriver by
//! its chromedriver, against a real mesh (control plane, relay, hosts running the embeddings
//! component). Nothing is mocked: the pages call the same REST API the CLI does.
//!
//! - An admin signs in with a token, makes a device invite, watches a host join with its
//!   `mesh-host join` command, approves it and sees it come online, publishes a workload by
//!   uploading it, embeds texts in the playground, watches the job appear in the live list
//!   and settle, and opens its check with the VRF proof checked.
//! - A person signs in with a person invite and sees no admin action; names an attacker
//!   chose (a device named `<img src=x onerror=alert(1)>`, hostile capabilities, a hostile
//!   person name) show as text on every page, and nothing runs.
//!
//! Screenshots of every page, at desktop and phone width, go to
//! `target/console-screenshots/`. Without Chromium and chromedriver the tests skip with a
//! reason, except under `CI=true`, where `scripts/test.sh` installs them.

use fantoccini::{Client, ClientBuilder, Locator};
use mesh_e2e::{MeshOptions, TestNet};
use mesh_proto::api::{NetworkPolicy, Role, RunJobRequest};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// What an attacker names a device: an image whose failed load would run a script.
const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)>";
/// What an attacker names themselves.
const HOSTILE_PERSON: &str = "\"><svg onload=alert(2)>";
/// A backend an attacker's device claims.
const HOSTILE_BACKEND: &str = "<script>alert(3)</script>";
const WAIT: Duration = Duration::from_secs(60);

/// A headless Chromium session; the driver stops when dropped.
struct Browser {
    client: Client,
    driver: Child,
    shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Whether the browser is here; under CI it must be.
fn browser_installed() -> bool {
    let found =
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "CI must have {CHROMIUM} and {CHROMEDRIVER} (scripts/test.sh installs them)"
        );
        eprintln!("skipping: the browser tests need Debian's chromium and chromium-driver");
    }
    found
}

impl Browser {
    async fn start(label: &str) -> Browser {
        let port = mesh_e2e::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--no-first-run", "--disable-extensions"],
            }),
        );
        // Leave an alert open for the test to see, rather than dismissing it.
        caps.insert("unhandledPromptBehavior".into(), "ignore".into());
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session: {e}"),
            }
        };
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/console-screenshots")
            .join(label);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            driver,
            shots,
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The element `css` matches, once it is there.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    /// Wait until the text of `css` contains `needle`; returns the text.
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(el) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = el.text().await
            {
                if text.contains(needle) {
                    return text;
                }
                last = text;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        panic!("{css} never showed {needle:?}; it showed {last:?}");
    }

    /// Press and release one key (WebDriver's code points: Tab is U+E004, Enter U+E007).
    async fn press(&self, key: char) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let actions = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
        self.client.perform_actions(actions).await.unwrap();
    }

    /// Wait until the element at `xpath` has a text for which `holds` is true (`what` says
    /// what that means, for the failure).
    async fn wait_row(&self, xpath: &str, what: &str, holds: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = match self.client.find(Locator::XPath(xpath)).await {
                Ok(el) => el.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if holds(&text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never: {what}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many elements `css` matches now.
    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn page_text(&self) -> String {
        self.find("main").await.text().await.unwrap()
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        el.clear().await.unwrap();
        el.send_keys(text).await.unwrap();
    }

    /// Go to a page of the console and wait until it has rendered its heading.
    async fn open(&self, base: &str, page: &str, heading: &str) {
        let url = format!("{base}/console/#/{page}");
        if self.client.current_url().await.unwrap().as_str() == url {
            // Going to the same fragment changes nothing: load the page afresh.
            self.client.refresh().await.unwrap();
        } else {
            self.goto(&url).await;
        }
        self.wait_text("main h1", heading).await;
    }

    /// Save a screenshot of the page at desktop width and at phone width.
    async fn shoot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
        self.client.set_window_size(390, 844).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // At phone width nothing may stick out sideways: the page reflows instead.
        let overflow = self
            .client
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            overflow.as_f64().unwrap_or(0.0) <= 1.0,
            "{name}: the page is {overflow} px wider than a phone's screen"
        );
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}-phone.png")), png).unwrap();
        self.client.set_window_size(1280, 900).await.unwrap();
    }

    /// No dialog opened (an injected `alert` would leave one open) and no element an
    /// attacker's markup would have made exists.
    async fn nothing_ran(&self, page: &str) {
        if let Ok(text) = self.client.get_alert_text().await {
            panic!("{page}: a script ran and opened an alert: {text:?}");
        }
        let injected = self
            .client
            .execute(
                "return document.querySelectorAll('img[src=\"x\"], svg[onload], script:not([src])').length;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            injected,
            serde_json::json!(0),
            "{page}: injected markup became elements"
        );
    }

    /// Every form control on the page has a label a screen reader reads out.
    async fn every_control_labelled(&self, page: &str) {
        let unlabelled = self
            .client
            .execute(
                r#"return [...document.querySelectorAll('input, select, textarea, button')]
                    .filter(el => el.type !== 'hidden')
                    .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                        && !(el.tagName === 'BUTTON' && el.textContent.trim()))
                    .map(el => el.outerHTML.slice(0, 80));"#,
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            unlabelled,
            serde_json::json!([]),
            "{page}: controls without labels"
        );
    }

    /// Accept the confirmation dialog an action opened.
    async fn confirm(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.client.get_alert_text().await.is_err() {
            assert!(Instant::now() < deadline, "no confirmation dialog");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.client.accept_alert().await.unwrap();
    }

    async fn sign_in_with_token(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/")).await;
        self.type_into("#token-sign-in input[name=token]", token)
            .await;
        self.click("#token-sign-in button[type=submit]").await;
        self.wait_text("main h1", "e2e").await;
    }

    async fn sign_out(&self) {
        self.click("#sign-out").await;
        self.wait_text("main h1", "Sign in").await;
    }
}

/// The code in a `mesh-host join … '<code>'` command.
fn code_of(command: &str) -> String {
    let start = command.find('\'').expect("a quoted code") + 1;
    let end = command[start..].find('\'').unwrap() + start;
    command[start..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_the_network_from_the_console() {
    if !browser_installed() {
        return;
    }
    let options = MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    };
    let mesh = TestNet::spawn(options.clone()).await;
    let network = mesh.network_id();
    let info = mesh.admin.network(&network).await.unwrap();
    mesh.admin
        .update_policy(
            &network,
            &NetworkPolicy {
                require_device_approval: true,
                ..info.policy
            },
        )
        .await
        .unwrap();
    let base = mesh.url.clone();
    let browser = Browser::start("admin").await;

    // The console is served by the control plane, with its policy on every file.
    let page = reqwest::get(format!("{base}/console/")).await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("require-trusted-types-for 'script'"),
        "{csp}"
    );

    // A token that does not hold gets the API's own message.
    browser.goto(&format!("{base}/")).await;
    browser.wait_text("main h1", "Sign in").await;
    browser.every_control_labelled("sign-in").await;
    browser.shoot("sign-in").await;
    browser
        .type_into("#token-sign-in input[name=token]", "mesh_not-a-real-token")
        .await;
    browser.click("#token-sign-in button[type=submit]").await;
    browser.wait_text("main [role=alert]", "not accepted").await;

    // Sign in with the keyboard alone: tab to the token field, type, press Enter.
    browser.goto(&format!("{base}/")).await;
    browser.find("#token-sign-in input[name=token]").await;
    let mut focused = String::new();
    for _ in 0..12 {
        browser.press('\u{e004}').await;
        focused = browser
            .client
            .execute(
                "return document.activeElement.name || document.activeElement.id || '';",
                vec![],
            )
            .await
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_string();
        if focused == "token" {
            break;
        }
    }
    assert_eq!(focused, "token", "Tab never reached the token field");
    let active = browser.client.active_element().await.unwrap();
    active.send_keys(&mesh.admin_token()).await.unwrap();
    browser.press('\u{e007}').await;
    browser.wait_text("main h1", "e2e").await;
    browser.wait_text("#stat-online", "1 of 1").await;
    browser.every_control_labelled("overview").await;
    browser.shoot("overview").await;

    // Devices: invite one, run its join command, approve it, watch it come online.
    browser.open(&base, "devices", "Devices").await;
    browser.wait_text("#device-list", "host0").await;
    browser.click("#device-invite button[type=submit]").await;
    let command = browser.wait_text("#join-command", "mesh-host join").await;
    assert!(
        command.contains(&format!("--control-plane {base}")),
        "{command}"
    );
    let laptop = mesh.join_host("laptop", code_of(&command), &options).await;
    let row = "//div[@id='device-list']//tr[.//strong[text()='laptop']]";
    browser
        .wait_row(row, "the new device shows as pending", |t| {
            t.contains("pending approval")
        })
        .await;
    browser.every_control_labelled("devices").await;
    browser.shoot("devices-pending").await;
    browser.click("button[aria-label='Approve laptop']").await;
    browser
        .wait_text("main [role=status]", "laptop: approved")
        .await;
    browser
        .wait_row(row, "the approved device comes online", |t| {
            t.contains("online") && !t.contains("offline")
        })
        .await;
    browser.shoot("devices").await;
    // The list refreshes itself; a keyboard user's focus stays on the control it was on.
    browser
        .client
        .execute(
            "window.before = document.querySelector('#device-list table'); document.querySelector(\"button[aria-label='Revoke host0']\").focus();",
            vec![],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while browser
        .client
        .execute(
            "return document.querySelector('#device-list table') === window.before;",
            vec![],
        )
        .await
        .unwrap()
        == serde_json::json!(true)
    {
        assert!(Instant::now() < deadline, "the device list never refreshed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let focused = browser
        .client
        .execute(
            "return document.activeElement.getAttribute('aria-label');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        focused,
        serde_json::json!("Revoke host0"),
        "a refresh moved the focus"
    );
    let devices = mesh.admin.devices(&network).await.unwrap();
    let joined = devices.iter().find(|d| d.id == laptop.device).unwrap();
    assert!(joined.online, "{joined:?}");

    // Workloads: publish the embeddings component by uploading it.
    browser.open(&base, "workloads", "Workloads").await;
    browser
        .find("#publish input[type=file]")
        .await
        .send_keys(mesh_test_artifacts::EMBEDDINGS)
        .await
        .unwrap();
    browser.click("#publish button[type=submit]").await;
    browser
        .wait_text("main [role=status]", "Published embeddings")
        .await;
    browser.wait_text("#workload-list", "embeddings").await;
    browser.every_control_labelled("workloads").await;
    browser.shoot("workloads").await;
    let workloads = mesh.admin.workloads(&network).await.unwrap();
    let embeddings = workloads.iter().find(|w| w.name == "embeddings").unwrap();
    browser.click("a.workload-name").await;
    browser.wait_text("main", "cosine").await;
    browser.shoot("workload").await;

    // Jobs: the live list shows a job submitted elsewhere without a reload, and it settles.
    browser.open(&base, "jobs", "Jobs").await;
    let run = mesh
        .admin
        .run_job(
            &network,
            &RunJobRequest {
                workload: embeddings.hash,
                input: serde_json::json!({"texts": ["submitted by the CLI"]}),
                idempotency_key: None,
            },
        )
        .await
        .unwrap();
    let state = format!("#job-list .job-state[data-job='{}']", run.job.id);
    browser.wait_text(&state, "done").await;
    browser.shoot("jobs").await;

    // The playground: embed three texts; the two about cats are nearer each other.
    browser.open(&base, "playground", "Playground").await;
    browser.every_control_labelled("playground").await;
    browser.click("#embed button[type=submit]").await;
    browser.find("#similarities").await;
    let cells = browser
        .client
        .execute(
            "return [...document.querySelectorAll('#similarities tbody tr')].map(r => [...r.querySelectorAll('td')].map(td => Number(td.textContent)));",
            vec![],
        )
        .await
        .unwrap();
    let sim: Vec<Vec<f64>> = serde_json::from_value(cells).unwrap();
    assert_eq!(sim.len(), 3);
    assert!((sim[0][0] - 1.0).abs() < 1e-3, "{sim:?}");
    assert!(
        sim[0][1] > sim[0][2] + 0.2,
        "cat and kitten should be nearer than cat and stocks: {sim:?}"
    );
    browser.shoot("playground").await;

    // Its job appears in the live list and settles; its page shows the receipt and the check.
    browser.click("#embed-job").await;
    browser.wait_text("#job-state", "done").await;
    let check = browser.wait_text("#check-state", "").await;
    let deadline = Instant::now() + WAIT;
    let mut check = check;
    while !["not selected", "passed"].iter().any(|s| check.contains(s)) {
        assert!(
            Instant::now() < deadline,
            "the check never settled: {check}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        check = browser.find("#check-state").await.text().await.unwrap();
    }
    browser.wait_text("#proof-verdict", "the proof holds").await;
    let text = browser.page_text().await;
    assert!(
        text.contains("onnxruntime"),
        "the receipt names its backend: {text}"
    );
    browser.shoot("job").await;
    let job_id = browser
        .client
        .current_url()
        .await
        .unwrap()
        .fragment()
        .unwrap()
        .trim_start_matches("/jobs/")
        .to_string();
    browser.open(&base, "jobs", "Jobs").await;
    browser
        .wait_text(
            &format!("#job-list .job-state[data-job='{job_id}']"),
            "done",
        )
        .await;

    // The chat box streams: the answer grows piece by piece before it is whole.
    mesh.publish(mesh_test_artifacts::CHAT).await;
    browser.open(&base, "playground", "Playground").await;
    browser.find("#chat textarea[name=message]").await;
    browser
        .client
        .execute(
            "window.lengths = []; new MutationObserver(() => { const a = document.querySelector('#chat-log .assistant'); if (a) window.lengths.push(a.textContent.length); }).observe(document.getElementById('chat-log'), { subtree: true, childList: true, characterData: true });",
            vec![],
        )
        .await
        .unwrap();
    browser
        .type_into("#chat input[name=max_tokens]", "32")
        .await;
    browser
        .type_into("#chat textarea[name=message]", "Name three colours.")
        .await;
    browser.press('\u{e007}').await;
    let answer = browser.find("#chat-log .assistant[data-done=true]").await;
    let text = answer.text().await.unwrap();
    assert!(!text.trim().is_empty(), "no answer");
    assert!(
        browser.count("#chat [role=alert]").await == 0,
        "the chat failed: {}",
        browser.page_text().await
    );
    let lengths: Vec<usize> = serde_json::from_value(
        browser
            .client
            .execute("return window.lengths;", vec![])
            .await
            .unwrap(),
    )
    .unwrap();
    let partial: std::collections::BTreeSet<usize> = lengths
        .iter()
        .copied()
        .filter(|&l| l > 0 && l < text.chars().count())
        .collect();
    assert!(
        partial.len() >= 2,
        "the answer did not stream: lengths {lengths:?}, final {}",
        text.chars().count()
    );
    browser.shoot("chat").await;

    // The devices page now knows how the control plane reached the job's device.
    let ran = mesh
        .admin
        .job(&network, &job_id.parse().unwrap())
        .await
        .unwrap();
    let executor = ran.job.executor.unwrap();
    let path = mesh
        .admin
        .devices(&network)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.id == executor)
        .and_then(|d| d.path)
        .expect("the gateway recorded its path to the executor");
    browser.open(&base, "devices", "Devices").await;
    browser
        .wait_text(
            &format!("#device-list tr:has(.mono[data-id='{executor}'])"),
            if path.relayed { "relayed" } else { "direct" },
        )
        .await;

    // Credits and the audit log, a page at a time.
    browser.open(&base, "credits", "Credits").await;
    browser.wait_text("#credit-history", "job").await;
    browser.every_control_labelled("credits").await;
    browser.shoot("credits").await;
    browser.open(&base, "audit", "Audit log").await;
    browser.wait_text("#audit-list", "device.approved").await;
    browser.shoot("audit").await;
    browser.open(&base, "people", "People").await;
    browser.every_control_labelled("people").await;
    browser.shoot("people").await;
    browser.sign_out().await;
    browser.nothing_ran("signed out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sees_no_admin_actions_and_hostile_names_stay_text() {
    if !browser_installed() {
        return;
    }
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 0,
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let base = mesh.url.clone();

    // An attacker's device, with a name and a backend meant to run as markup.
    let capabilities = mesh_proto::device::Capabilities {
        backends: vec![HOSTILE_BACKEND.into()],
        ..Default::default()
    };
    mesh.register_device_as(&network, &mesh_e2e::fresh_key(), HOSTILE_NAME, capabilities)
        .await;

    // A person joins through the console with an invite, under a hostile name.
    let person_invite = mesh.person_invite(Role::Member).await;
    let browser = Browser::start("member").await;
    browser.goto(&format!("{base}/")).await;
    browser
        .type_into("#invite-sign-in input[name=code]", &person_invite.code)
        .await;
    browser
        .type_into("#invite-sign-in input[name=name]", HOSTILE_PERSON)
        .await;
    browser.click("#invite-sign-in button[type=submit]").await;
    browser.wait_text("main h1", "e2e").await;
    browser.wait_text("#session", HOSTILE_PERSON).await;
    browser.nothing_ran("member overview").await;
    browser.shoot("overview").await;

    // Devices: the name is text; a member gets no approve, revoke or invite.
    browser.open(&base, "devices", "Devices").await;
    browser.wait_text("#device-list", HOSTILE_NAME).await;
    browser.wait_text("#device-list", HOSTILE_BACKEND).await;
    browser.nothing_ran("member devices").await;
    let admin_only = [
        "button[aria-label^='Approve']",
        "button[aria-label^='Revoke']",
        "#device-invite",
    ];
    for css in admin_only {
        assert!(browser.count(css).await == 0, "a member sees {css}");
    }
    browser.shoot("devices").await;
    for (page, heading, hidden) in [
        (
            "people",
            "People",
            [
                "#person-invite",
                "button[aria-label^='Remove']",
                "#invite-list",
            ],
        ),
        (
            "workloads",
            "Workloads",
            ["#publish", "button[aria-label^='Yank']", "#publish"],
        ),
        (
            "credits",
            "Credits",
            ["#grant", "#member-balances", "#grant"],
        ),
    ] {
        browser.open(&base, page, heading).await;
        browser.find("main h1").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for css in hidden {
            assert!(
                browser.count(css).await == 0,
                "a member sees {css} on {page}"
            );
        }
        browser.nothing_ran(page).await;
        browser.shoot(page).await;
    }
    browser.open(&base, "people", "People").await;
    browser.wait_text("#member-list", HOSTILE_PERSON).await;
    browser.open(&base, "audit", "Audit log").await;
    browser.wait_text("main", "for the network's admins").await;
    assert!(browser.count("#audit-list").await == 0);

    // The admin's pages, where the same names sit next to live buttons and in the audit log.
    browser.sign_out().await;
    browser.sign_in_with_token(&base, &mesh.admin_token()).await;
    for (page, heading, needle) in [
        ("devices", "Devices", HOSTILE_NAME),
        ("people", "People", HOSTILE_PERSON),
        ("audit", "Audit log", "device.register"),
        ("overview", "e2e", "device.register"),
    ] {
        browser.open(&base, page, heading).await;
        browser.wait_text("main", needle).await;
        browser.nothing_ran(page).await;
    }
    browser.open(&base, "devices", "Devices").await;
    browser.wait_text("#device-list", HOSTILE_NAME).await;
    browser
        .click(&format!("button[aria-label='Revoke {HOSTILE_NAME}']"))
        .await;
    browser.confirm().await;
    browser.wait_text("main [role=status]", "revoked").await;
    browser.nothing_ran("admin devices after revoking").await;
    browser.shoot("admin-devices").await;

    // Credits: a grant to the person, who shows with the new balance.
    browser.open(&base, "credits", "Credits").await;
    browser.wait_text("#member-balances", HOSTILE_PERSON).await;
    browser
        .find("#grant select[name=person]")
        .await
        .select_by_label(&format!("{HOSTILE_PERSON} (member)"))
        .await
        .unwrap();
    browser.type_into("#grant input[name=amount]", "7").await;
    browser
        .type_into("#grant input[name=memo]", HOSTILE_NAME)
        .await;
    browser.click("#grant button[type=submit]").await;
    browser
        .wait_text("main [role=status]", "Granted 7 credits")
        .await;
    browser.wait_text("#member-balances", "1007").await;
    browser.nothing_ran("credits").await;

    // People: an invite made and revoked; the person made an admin, then removed.
    browser.open(&base, "people", "People").await;
    browser.click("#person-invite button[type=submit]").await;
    let command = browser.wait_text("#person-invite-code", "mesh login").await;
    assert!(command.contains("--invite 'mesh-invite-"), "{command}");
    browser.wait_text("#invite-list", "person (member)").await;
    browser
        .click("#invite-list button[aria-label='Revoke invite']")
        .await;
    browser
        .wait_text("main [role=status]", "The invite was revoked")
        .await;
    let role = format!("select[aria-label='Role of {HOSTILE_PERSON}']");
    browser
        .find(&role)
        .await
        .select_by_value("admin")
        .await
        .unwrap();
    browser
        .client
        .find(Locator::XPath(&format!(
            "//tr[.//select[@aria-label='Role of {HOSTILE_PERSON}']]//button[text()='Change role']"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_text("main [role=status]", "is now an admin")
        .await;
    browser
        .click(&format!("button[aria-label='Remove {HOSTILE_PERSON}']"))
        .await;
    browser.confirm().await;
    browser.wait_text("main [role=status]", "was removed").await;
    let members = mesh.admin.members(&network).await.unwrap();
    assert!(
        members.iter().all(|m| m.name != HOSTILE_PERSON),
        "{members:?}"
    );
    browser.nothing_ran("people").await;
    browser.shoot("admin-people").await;

    // Workloads: a yank, after which the workload shows as yanked and offers no yank.
    browser.open(&base, "workloads", "Workloads").await;
    browser.click("button[aria-label^='Yank embeddings']").await;
    browser.confirm().await;
    browser.wait_text("main [role=status]", "was yanked").await;
    browser.wait_text("#workload-list", "yanked").await;
    assert!(browser.count("button[aria-label^='Yank']").await == 0);

    // The audit log, a page at a time: 30 more events make a second page.
    for _ in 0..30 {
        mesh.device_invite(&network).await;
    }
    browser.open(&base, "audit", "Audit log").await;
    let first = browser.wait_text("#audit-list", "invite.create").await;
    browser.click("#audit-older").await;
    browser.wait_text("#audit-list", "Page 2").await;
    let second = browser.find("#audit-list").await.text().await.unwrap();
    assert!(
        second.contains("member.remove") || second.contains("device.register"),
        "{second}"
    );
    assert_ne!(first, second);
    browser.click("#audit-newer").await;
    browser.wait_text("#audit-list", "Page 1").await;
    browser.shoot("admin-audit").await;
}
