//! The config file: `slotd.toml` → spanned TOML tree → [`Config`].
//!
//! Pipeline: the file is parsed with toml's recoverable parser (all syntax errors are
//! kept), then read key by key by [`reader::Table`] into the typed [`Config`] while
//! every problem is recorded with its line and key path; cross-field checks (unique
//! hosts, a `production` slot, `auto_swap` targets) run last. Either the whole file is
//! good and a `Config` comes out, or [`ConfigErrors`] lists everything wrong with it.
//! Nothing downstream of this module sees an unparsed string: addresses are
//! `SocketAddr`s, durations `Duration`s, hosts lower-cased.
//!
//! The file schema lives in this reader rather than in serde structs because serde
//! stops at the first error and the contract asks for all of them at once.

mod apps;
mod error;
mod reader;
mod sections;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors};
use reader::{Doc, Table};

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub state: StateConfig,
    pub apps: Vec<AppConfig>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    /// One `slotd::access` log event per request (off by default).
    pub access_log: bool,
    pub client: ClientLimits,
    /// After SIGTERM (or the hand-over of an upgrade), how long in-flight requests
    /// get to finish; whole seconds.
    pub shutdown_grace: Duration,
}

/// Limits on client connections and requests (`[proxy]`), against oversized and
/// slow (slowloris, slow-read) clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// A new connection must deliver its first request head within this.
    pub header_timeout: Duration,
    /// An idle keep-alive connection must deliver its next request head within this.
    pub keepalive_timeout: Duration,
    /// Longest wait for the next bytes of a request body.
    pub body_timeout: Duration,
    /// Longest wait for a client to take the next bytes of a response.
    pub send_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; larger gets 431.
    pub max_header_size: usize,
    /// Most header fields in a request; more gets 431.
    pub max_headers: usize,
    /// Longest request target (URI) in bytes; longer gets 414.
    pub max_uri_length: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            max_header_size: 32 * 1024,
            max_headers: 100,
            max_uri_length: 8 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub auth: AdminAuth,
}

/// Where the admin API token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAuth {
    /// The file and the config line that names it.
    TokenFile { path: PathBuf, line: usize },
    /// The variable and the config line that names it.
    TokenEnv { var: String, line: usize },
    /// Only accepted on a loopback listener with `insecure_no_auth = true`.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateConfig {
    File { path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: String,
    pub warmup: WarmupConfig,
    pub timeouts: TimeoutConfig,
    pub health: HealthConfig,
    pub limits: AppLimits,
    /// Further instances tried after a connect failure (or, for idempotent requests,
    /// a failure on a reused connection before any answer); `[[app]] retries`.
    pub retries: u32,
    /// After a swap moves the pool an upgraded connection (WebSocket, ...) was
    /// proxied to out of its slot, how long it may go on before it is closed.
    pub drain_timeout: Duration,
    pub slots: Vec<SlotConfig>,
    /// Setting name → upstream request header that carries it.
    pub settings_headers: Vec<(String, String)>,
}

impl AppConfig {
    pub fn slot(&self, name: &str) -> Option<&SlotConfig> {
        self.slots.iter().find(|s| s.name == name)
    }
}

/// How a pool is warmed before it takes traffic (`[app.warmup]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmupConfig {
    pub path: String,
    /// Accepted statuses; empty means any HTTP response counts.
    pub statuses: Vec<u16>,
    /// Overall deadline for the whole pool.
    pub timeout: Duration,
    /// Successful requests needed per instance.
    pub requests: u32,
    /// Deadline of one warm-up request.
    pub request_timeout: Duration,
    /// Pause between attempts on an instance that has not answered well yet.
    pub retry_interval: Duration,
}

impl Default for WarmupConfig {
    fn default() -> Self {
        WarmupConfig {
            path: "/".into(),
            statuses: Vec::new(),
            timeout: Duration::from_secs(60),
            requests: 1,
            request_timeout: Duration::from_secs(10),
            retry_interval: Duration::from_millis(200),
        }
    }
}

/// Upstream timeouts of an app (`[app.timeouts]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutConfig {
    pub connect: Duration,
    /// Longest wait for the next bytes of an upstream response; exceeding it is a 504.
    pub read: Duration,
    pub write: Duration,
    /// How long an unused upstream keep-alive connection stays in the pool.
    pub idle: Duration,
    /// Longest time from sending a request upstream to the end of its response;
    /// `None`: no limit beyond `read` between bytes.
    pub total: Option<Duration>,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(60),
            write: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            total: None,
        }
    }
}

/// Instance health of an app (`[app.health]`): active checks and passive ejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Active checks; `None` (no `check_path`): only passive ejection.
    pub check: Option<ActiveCheck>,
    /// Consecutive failed requests (connect error, timeout, reset, bad response)
    /// that take an instance out of rotation; 0 turns passive ejection off.
    pub max_failures: u32,
    /// How long an ejected instance stays out before it gets traffic again.
    pub ejection_time: Duration,
    /// With every instance of a slot down, keep sending to all of them instead of
    /// answering 503.
    pub fail_open: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: None,
            max_failures: 3,
            ejection_time: Duration::from_secs(10),
            fail_open: false,
        }
    }
}

/// An active health check: `GET path` on every instance of every deployment in a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passing checks that bring a down instance back.
    pub healthy_threshold: u32,
    /// Consecutive failing checks that take an instance down.
    pub unhealthy_threshold: u32,
    /// Passing statuses; empty means 200-399.
    pub statuses: Vec<u16>,
}

impl ActiveCheck {
    pub fn passes(&self, status: u16) -> bool {
        if self.statuses.is_empty() {
            (200..400).contains(&status)
        } else {
            self.statuses.contains(&status)
        }
    }
}

/// Request limits of an app (`[app.limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppLimits {
    /// Largest request body accepted; larger ones get 413. `None`: no limit.
    pub max_body_size: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct SlotConfig {
    pub name: String,
    /// Lower-cased, without port.
    pub hosts: Vec<String>,
    /// The deployment this slot starts with when the state store has none for it.
    pub initial: Option<InitialDeployment>,
    /// Sticky upstream request headers, in file order.
    pub headers: Vec<(String, String)>,
    pub auto_swap: Option<String>,
    pub sticky_settings: Vec<String>,
    /// Settings of the initial deployment; the sticky ones stay with the slot.
    pub settings: BTreeMap<String, String>,
}

impl SlotConfig {
    /// The sticky settings this slot keeps whatever deployment it holds.
    pub fn sticky_setting_values(&self) -> BTreeMap<String, String> {
        self.settings
            .iter()
            .filter(|(k, _)| self.sticky_settings.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialDeployment {
    pub version: String,
    pub instances: Vec<String>,
}

impl Config {
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// The folder relative paths in the file are resolved against.
    pub fn folder(&self) -> PathBuf {
        folder_of(&self.file)
    }
}

fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::whole_file(
            path,
            format!("cannot read the config file: {e} (pass --config with the path of slotd.toml)"),
        )
    })?;
    parse(path, &src)
}

/// Checks config text; `path` is used for messages and to resolve relative paths.
pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
    let mut doc = Doc::new(path.to_path_buf(), src);
    let (root, syntax_errors) = toml::de::DeTable::parse_recoverable(src);
    for e in &syntax_errors {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().replace('\n', " ");
        doc.error(&span, "", format!("TOML syntax error: {msg}"), None);
    }
    if !syntax_errors.is_empty() {
        // The recovered tree after a syntax error mostly yields follow-on noise.
        return Err(finish(doc));
    }
    let folder = folder_of(path);
    let mut root = Table::root(&root);
    let proxy = sections::read_proxy(&mut doc, &mut root);
    let admin = sections::read_admin(&mut doc, &mut root, &folder);
    let state = sections::read_state(&mut doc, &mut root, &folder);
    let apps = apps::read_apps(&mut doc, &mut root);
    root.finish(&mut doc);

    if doc.errors.is_empty() {
        if let (Some(proxy), Some(admin), Some(state)) = (proxy, admin, state) {
            return Ok(Config {
                file: path.to_path_buf(),
                proxy,
                admin,
                state,
                apps,
            });
        }
    }
    Err(finish(doc))
}

fn finish(mut doc: Doc) -> ConfigErrors {
    doc.errors.sort_by_key(|e| e.line);
    ConfigErrors(doc.errors)
}

pub(crate) const DURATION_HINT: &str =
    r#"write a quoted duration, e.g. "500ms", "30s", "2m" or "1h""#;

pub(crate) const SIZE_HINT: &str =
    r#"write a number of bytes or a quoted size, e.g. 1048576, "512KiB", "10MiB" or "1GiB""#;

/// Parses a byte size: `"1024"`, `"512B"`, `"512KiB"`, `"10MiB"`, `"1GiB"` (also `KB`,
/// `MB`, `GB`, `K`, `M`, `G`, all meaning powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(format!("`{s}` is not a size"));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("`{s}` is too large"))?;
    let unit = t[digits..].trim();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("`{s}` has an unknown unit `{unit}`")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses `"500ms"`, `"30s"`, `"2m"`, `"1h"` and sums like `"1m30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" => return Err(format!("`{s}` has no unit")),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(src: &str) -> Vec<String> {
        match parse(Path::new("t.toml"), src) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const GOOD: &str = r#"
[proxy]
listen = ["127.0.0.1:8080"]
threads = 1

[admin]
listen = "127.0.0.1:9901"
insecure_no_auth = true

[[app]]
name = "shop"

[[app.slot]]
name = "production"
hosts = ["Shop.Example.com", "localhost"]
instances = ["127.0.0.1:9001"]
version = "v1"
[app.slot.headers]
X-Slot = "production"

[[app.slot]]
name = "staging"
hosts = ["staging.shop.example.com"]
"#;

    #[test]
    fn a_good_file_loads() {
        let c = parse(Path::new("conf/slotd.toml"), GOOD).expect("good config");
        assert_eq!(c.proxy.threads, 1);
        assert_eq!(c.admin.auth, AdminAuth::None);
        let app = &c.apps[0];
        assert_eq!(app.slots[0].hosts, vec!["shop.example.com", "localhost"]);
        assert_eq!(app.slots[0].initial.as_ref().unwrap().version, "v1");
        assert!(app.slots[1].initial.is_none());
        assert_eq!(
            c.state,
            StateConfig::File {
                path: PathBuf::from("conf/var/slotd-state.json")
            }
        );
    }

    #[test]
    fn several_errors_are_reported_together_with_lines() {
        let src = GOOD
            .replace("threads = 1", "threads = 0\nlistn = 1")
            .replace("\"127.0.0.1:9001\"", "\"127.0.0.1:99999\"");
        let errs = errors_of(&src);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs[0].starts_with("t.toml:4: proxy.threads: 0 is out of range"),
            "{errs:#?}"
        );
        assert!(
            errs[1].contains("t.toml:5: proxy.listn: unknown key `listn` (did you mean `listen`?)"),
            "{errs:#?}"
        );
        assert!(
            errs[2].contains("app[shop].slot[production].instances[0]"),
            "{errs:#?}"
        );
    }

    #[test]
    fn missing_production_slot_is_an_error() {
        let src = GOOD.replace("name = \"production\"", "name = \"prod\"");
        let errs = errors_of(&src);
        assert!(
            errs.iter()
                .any(|e| e.contains("has no slot named `production`")),
            "{errs:#?}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3 days").is_err());
    }
}
