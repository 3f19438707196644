//! Headless Chromium through ChromeDriver (WebDriver, `fantoccini`), for the hosted page's stories.
//! Debian's `chromium` and `chromium-driver`; a test without them is skipped, saying so, unless
//! `WEARLINK_TEST_REQUIRE_BROWSER=1` (CI) makes that a failure.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// Debian's paths; `WEARLINK_TEST_CHROMIUM` / `WEARLINK_TEST_CHROMEDRIVER` point elsewhere.
fn chromium() -> String {
    std::env::var("WEARLINK_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

fn chromedriver() -> String {
    std::env::var("WEARLINK_TEST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

/// One browser story at a time: two cores are shared with the servers under test.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct BrowserOptions {
    pub width: u32,
    pub height: u32,
    /// The browser's `Accept-Language`.
    pub accept_language: &'static str,
    /// A phone: the viewport is exactly `width` CSS pixels, device pixel ratio 2, touch.
    pub phone: bool,
    /// The system prefers a dark colour scheme.
    pub dark: bool,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        Self { width: 1280, height: 900, accept_language: "en-US,en", phone: false, dark: false }
    }
}

pub struct Browser {
    pub client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Whether the browser stories can run here; `false` (after saying so) skips them.
pub fn available() -> bool {
    let (chromium, chromedriver) = (chromium(), chromedriver());
    let present = std::path::Path::new(&chromium).exists() && std::path::Path::new(&chromedriver).exists();
    if !present {
        if std::env::var("WEARLINK_TEST_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("WEARLINK_TEST_REQUIRE_BROWSER=1 but {chromium} or {chromedriver} is missing (apt-get install chromium chromium-driver)");
        }
        // Straight to stderr, past the test harness's capture, once: a skip must be seen.
        static NOTICE: std::sync::Once = std::sync::Once::new();
        NOTICE.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n** BROWSER STORIES SKIPPED: {chromium} or {chromedriver} is missing \
                 (apt-get install chromium chromium-driver; WEARLINK_TEST_REQUIRE_BROWSER=1 fails instead) **\n"
            );
        });
    }
    present
}

impl Browser {
    /// Starts ChromeDriver and a fresh headless Chromium (new profile); `None` when skipped.
    pub async fn start(options: BrowserOptions) -> Option<Browser> {
        if !available() {
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().await;
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        // Its own process group, with the Chromium it starts: a story that fails before closing
        // the browser still ends both (see `Drop`).
        let driver = tokio::process::Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        // The flags this machine needs (no sandbox as root, no background calls to the closed network).
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-crash-reporter".into(),
            "--disable-breakpad".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={},{}", options.width, options.height),
            format!("--lang={}", options.accept_language.split(',').next().unwrap_or("en")),
        ];
        if options.phone {
            args.push("--hide-scrollbars".into());
        }
        if options.dark {
            args.push("--force-dark-mode".into());
        }
        let mut chrome = json!({
            "binary": chromium(),
            "args": args,
            "prefs": {"intl.accept_languages": options.accept_language},
        });
        if options.phone {
            chrome["mobileEmulation"] = json!({
                "deviceMetrics": {"width": options.width, "height": options.height, "pixelRatio": 2.0, "touch": true}
            });
        }
        let capabilities = json!({"browserName": "chrome", "goog:chromeOptions": chrome});
        let capabilities = capabilities.as_object().unwrap().clone();
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(capabilities.clone()).connect(&webdriver).await {
                Ok(client) => break client,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
            }
        };
        Some(Browser { client, _driver: driver, _profile: profile, _turn: turn })
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Waits (5 s at most) for an element, by CSS selector.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.wait().at_most(Duration::from_secs(5)).for_element(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => panic!("no {css} on {}: {e}", self.url_text().await),
        }
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// The text of an element.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    pub async fn url(&self) -> url::Url {
        self.client.current_url().await.unwrap()
    }

    async fn url_text(&self) -> String {
        self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default()
    }

    /// Waits (5 s at most) until the address starts with `prefix`.
    pub async fn wait_for_url(&self, prefix: &str) -> url::Url {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let url = self.url().await;
            if url.as_str().starts_with(prefix) {
                return url;
            }
            assert!(tokio::time::Instant::now() < deadline, "still at {url}, waited for {prefix}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a script in the page (WebDriver's own, not the page's: the page has none).
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Presses a key (`fantoccini::key::Key`) on whatever has the focus.
    pub async fn press(&self, key: fantoccini::key::Key) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let value: char = key.into();
        let actions = KeyActions::new("keyboard".into()).then(KeyAction::Down { value }).then(KeyAction::Up { value });
        self.client.perform_actions(actions).await.unwrap();
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.unwrap()
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // ChromeDriver and the Chromium it started, even when the story failed before `close`.
        if let Some(pid) = self._driver.id() {
            let _ = std::process::Command::new("kill").args(["-s", "KILL", "--", &format!("-{pid}")]).status();
        }
    }
}
