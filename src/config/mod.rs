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

mod error;
mod reader;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors};
use reader::{At, Doc, Table};

use crate::model::{self, MAX_SLOTS_PER_APP, PRODUCTION};

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
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(60),
            write: Duration::from_secs(60),
        }
    }
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
    let proxy = read_proxy(&mut doc, &mut root);
    let admin = read_admin(&mut doc, &mut root, &folder);
    let state = read_state(&mut doc, &mut root, &folder);
    let apps = read_apps(&mut doc, &mut root);
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

// === sections ===

fn read_proxy(doc: &mut Doc, root: &mut Table) -> Option<ProxyConfig> {
    let default_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(mut t) = root.table(doc, "proxy") else {
        return Some(ProxyConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            threads: default_threads,
        });
    };
    let mut ok = true;
    let listen = match t.strings(doc, "listen") {
        None => vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
        Some(list) => {
            if list.is_empty() {
                doc.error(
                    &t.value_span("listen").unwrap_or(t.span.clone()),
                    "proxy.listen",
                    "needs at least one address",
                    Some(r#"e.g. listen = ["0.0.0.0:8080"]"#.into()),
                );
                ok = false;
            }
            let mut out = Vec::new();
            for a in list {
                match listen_address(doc, &a, "0.0.0.0:8080") {
                    Some(addr) if out.contains(&addr) => {
                        doc.error(&a.span, &a.key, format!("{addr} is listed twice"), None);
                        ok = false;
                    }
                    Some(addr) => out.push(addr),
                    None => ok = false,
                }
            }
            out
        }
    };
    let threads = match t.integer(doc, "threads", 1, 1024) {
        Some(n) => n.value as usize,
        None if t.has("threads") => {
            ok = false;
            1
        }
        None => default_threads,
    };
    t.finish(doc);
    ok.then_some(ProxyConfig { listen, threads })
}

fn listen_address(doc: &mut Doc, a: &At<String>, example: &str) -> Option<SocketAddr> {
    match a.value.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            doc.error(
                &a.span,
                &a.key,
                format!("`{}` is not an IP address with a port", a.value),
                Some(format!(r#"write e.g. "{example}""#)),
            );
            None
        }
    }
}

fn read_admin(doc: &mut Doc, root: &mut Table, folder: &Path) -> Option<AdminConfig> {
    let default_listen = SocketAddr::from(([127, 0, 0, 1], 9901));
    let Some(mut t) = root.table(doc, "admin") else {
        if root.has("admin") {
            return None; // not a table: already reported
        }
        doc.error(
            &(0..0),
            "admin",
            "the [admin] section is missing, so the admin API would have no token",
            Some(
                r#"add [admin] with token_file = "admin.token" or token_env = "SLOTD_TOKEN""#
                    .into(),
            ),
        );
        return None;
    };
    let errors_before = doc.errors.len();
    let listen_at = t.string(doc, "listen");
    let listen = match &listen_at {
        Some(a) => listen_address(doc, a, "127.0.0.1:9901"),
        None if t.has("listen") => None,
        None => Some(default_listen),
    };
    // Whether `listen` is known; if not, its error is already recorded and the
    // loopback rule below cannot be judged.
    let listen_known = listen.is_some();
    let token_file = t.string(doc, "token_file");
    let token_env = t.string(doc, "token_env");
    let insecure = t.boolean(doc, "insecure_no_auth");
    let auth = match (&token_file, &token_env) {
        (Some(f), Some(_)) => {
            doc.error(
                &f.span,
                "admin",
                "token_file and token_env are both set",
                Some("keep one of them".into()),
            );
            None
        }
        (Some(f), None) if f.value.trim().is_empty() => {
            doc.error(
                &f.span,
                &f.key,
                "is empty",
                Some("give the path of the token file".into()),
            );
            None
        }
        (Some(f), None) => Some(AdminAuth::TokenFile {
            path: folder.join(&f.value),
            line: doc.line_of(f.span.start),
        }),
        (None, Some(e)) if !valid_env_name(&e.value) => {
            doc.error(
                &e.span,
                &e.key,
                format!("`{}` is not an environment variable name", e.value),
                Some("use letters, digits and _, e.g. SLOTD_TOKEN".into()),
            );
            None
        }
        (None, Some(e)) => Some(AdminAuth::TokenEnv {
            var: e.value.clone(),
            line: doc.line_of(e.span.start),
        }),
        (None, None) if !listen_known || (insecure.is_none() && t.has("insecure_no_auth")) => {
            None // the error that makes this undecidable is already recorded
        }
        (None, None) => {
            let loopback = listen.is_some_and(|l| l.ip().is_loopback());
            match &insecure {
                Some(i) if i.value && loopback => Some(AdminAuth::None),
                Some(i) if i.value => {
                    doc.error(
                        &i.span,
                        &i.key,
                        "is only allowed when admin.listen is a loopback address",
                        Some(
                            "set token_file or token_env to expose the admin API beyond this host"
                                .into(),
                        ),
                    );
                    None
                }
                _ => {
                    doc.error(
                        &t.span,
                        "admin",
                        "no token is configured for the admin API",
                        Some(r#"set token_file = "admin.token" or token_env = "SLOTD_TOKEN"; on a loopback listener only, insecure_no_auth = true also works"#.into()),
                    );
                    None
                }
            }
        }
    };
    t.finish(doc);
    if doc.errors.len() > errors_before {
        return None;
    }
    Some(AdminConfig {
        listen: listen?,
        auth: auth?,
    })
}

fn valid_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn read_state(doc: &mut Doc, root: &mut Table, folder: &Path) -> Option<StateConfig> {
    let default_path = folder.join("var/slotd-state.json");
    let Some(mut t) = root.table(doc, "state") else {
        return Some(StateConfig::File { path: default_path });
    };
    let errors_before = doc.errors.len();
    let backend = t.string(doc, "backend");
    let path = t.string(doc, "path");
    let _ = t.strings(doc, "endpoints");
    let _ = t.string(doc, "prefix");
    let state = match backend.as_ref().map(|b| b.value.as_str()) {
        None | Some("file") => {
            for key in ["endpoints", "prefix"] {
                if let Some(span) = t.key_span(key) {
                    doc.error(
                        &span,
                        &format!("state.{key}"),
                        "only applies to the etcd backend",
                        Some("remove it, or set backend = \"etcd\"".into()),
                    );
                }
            }
            match path {
                Some(p) if p.value.trim().is_empty() => {
                    doc.error(
                        &p.span,
                        &p.key,
                        "is empty",
                        Some("give a file path, e.g. \"var/slotd-state.json\"".into()),
                    );
                    None
                }
                Some(p) => Some(StateConfig::File {
                    path: folder.join(&p.value),
                }),
                None => Some(StateConfig::File { path: default_path }),
            }
        }
        Some("etcd") => {
            let b = backend.as_ref().expect("matched Some above");
            doc.error(
                &b.span,
                &b.key,
                "the etcd backend is not available in this version of slotd",
                Some("use backend = \"file\"".into()),
            );
            None
        }
        Some(other) => {
            let b = backend.as_ref().expect("matched Some above");
            doc.error(
                &b.span,
                &b.key,
                format!("unknown backend `{other}`"),
                Some("use \"file\"".into()),
            );
            None
        }
    };
    t.finish(doc);
    if doc.errors.len() > errors_before {
        return None;
    }
    state
}

// === apps ===

fn read_apps(doc: &mut Doc, root: &mut Table) -> Vec<AppConfig> {
    let tables = root.tables(doc, "app");
    let mut apps: Vec<AppConfig> = Vec::new();
    let mut app_lines: HashMap<String, usize> = HashMap::new();
    // host -> (where it was first used, line)
    let mut hosts_seen: HashMap<String, (String, usize)> = HashMap::new();
    for mut t in tables {
        let name = t.string(doc, "name");
        match &name {
            Some(n) => {
                if let Err(why) = model::check_name(&n.value) {
                    doc.error(&n.span, &n.key, why, None);
                } else if let Some(line) = app_lines.get(&n.value) {
                    doc.error(
                        &n.span,
                        &n.key,
                        format!("app `{}` is already defined on line {line}", n.value),
                        Some("app names must be unique".into()),
                    );
                } else {
                    app_lines.insert(n.value.clone(), doc.line_of(n.span.start));
                }
                t.path = format!("app[{}]", n.value);
            }
            None if !t.has("name") => {
                doc.error(
                    &t.span,
                    &t.path,
                    "missing key `name`",
                    Some("every [[app]] needs a name".into()),
                );
            }
            None => {}
        }
        if let Some(app) = read_app(doc, t, name, &mut hosts_seen) {
            apps.push(app);
        }
    }
    apps
}

fn read_app(
    doc: &mut Doc,
    mut t: Table,
    name: Option<At<String>>,
    hosts_seen: &mut HashMap<String, (String, usize)>,
) -> Option<AppConfig> {
    let errors_before = doc.errors.len();
    let warmup = read_warmup(doc, &mut t);
    let timeouts = read_timeouts(doc, &mut t);
    let settings_headers = t.string_map(doc, "settings_headers").unwrap_or_default();
    let mut headers_out = Vec::new();
    for (k, v) in settings_headers {
        if check_header_name(doc, &v).is_some() {
            headers_out.push((k.value, v.value.to_ascii_lowercase()));
        }
    }
    let slot_tables = t.tables(doc, "slot");
    let app_span = t.span.clone();
    let app_path = t.path.clone();
    t.finish(doc);

    let slot_count = slot_tables.len();
    let mut slots: Vec<SlotConfig> = Vec::new();
    // Every slot name that could be read, even of slots with other errors, so the
    // app-wide checks below run alongside the per-slot ones.
    let mut names: Vec<String> = Vec::new();
    let mut auto_swaps: Vec<(String, At<String>)> = Vec::new();
    for mut st in slot_tables {
        let sname = st.string(doc, "name");
        if let Some(n) = &sname {
            names.push(n.value.clone());
            st.path = format!("{app_path}.slot[{}]", n.value);
            if let Err(why) = model::check_name(&n.value) {
                doc.error(&n.span, &n.key, why, None);
            } else if slots.iter().any(|s| s.name == n.value) {
                doc.error(
                    &n.span,
                    &n.key,
                    format!("slot `{}` is defined twice in this app", n.value),
                    None,
                );
            }
        } else if !st.has("name") {
            doc.error(
                &st.span,
                &st.path,
                "missing key `name`",
                Some("every [[app.slot]] needs a name".into()),
            );
        }
        let auto_swap = st.string(doc, "auto_swap");
        if let (Some(n), Some(a)) = (&sname, &auto_swap) {
            auto_swaps.push((n.value.clone(), a.clone()));
        }
        if let Some(slot) = read_slot(doc, st, sname.as_ref(), hosts_seen) {
            slots.push(SlotConfig {
                auto_swap: auto_swap.map(|a| a.value),
                ..slot
            });
        }
    }

    if name.is_some() && names.len() == slot_count {
        if !names.iter().any(|s| s == PRODUCTION) {
            doc.error(
                &app_span,
                &app_path,
                "has no slot named `production`",
                Some("every app needs a [[app.slot]] with name = \"production\"".into()),
            );
        }
        if slot_count > MAX_SLOTS_PER_APP {
            doc.error(
                &app_span,
                &app_path,
                format!("has {slot_count} slots; at most {MAX_SLOTS_PER_APP} are allowed"),
                None,
            );
        }
        for (slot, at) in &auto_swaps {
            let target = &at.value;
            if target == slot {
                doc.error(
                    &at.span,
                    &at.key,
                    "a slot cannot auto-swap into itself",
                    Some("name another slot, usually \"production\"".into()),
                );
            } else if !names.contains(target) {
                doc.error(
                    &at.span,
                    &at.key,
                    format!("names slot `{target}`, which this app does not have"),
                    None,
                );
            }
        }
    }
    if doc.errors.len() > errors_before {
        return None;
    }
    Some(AppConfig {
        name: name?.value,
        warmup,
        timeouts,
        slots,
        settings_headers: headers_out,
    })
}

fn read_warmup(doc: &mut Doc, app: &mut Table) -> WarmupConfig {
    let mut w = WarmupConfig::default();
    let Some(mut t) = app.table(doc, "warmup") else {
        return w;
    };
    if let Some(p) = t.string(doc, "path") {
        if !p.value.starts_with('/') || p.value.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            doc.error(
                &p.span,
                &p.key,
                format!("`{}` is not a request path", p.value),
                Some("start it with /, e.g. \"/healthz\"".into()),
            );
        } else {
            w.path = p.value;
        }
    }
    if let Some(list) = t.integers(doc, "statuses", 100, 599) {
        w.statuses = list.into_iter().map(|s| s.value as u16).collect();
    }
    if let Some(d) = duration(doc, &mut t, "timeout") {
        w.timeout = d;
    }
    if let Some(n) = t.integer(doc, "requests", 1, 10_000) {
        w.requests = n.value as u32;
    }
    if let Some(d) = duration(doc, &mut t, "request_timeout") {
        w.request_timeout = d;
    }
    if let Some(d) = duration(doc, &mut t, "retry_interval") {
        w.retry_interval = d;
    }
    t.finish(doc);
    w
}

fn read_timeouts(doc: &mut Doc, app: &mut Table) -> TimeoutConfig {
    let mut out = TimeoutConfig::default();
    let Some(mut t) = app.table(doc, "timeouts") else {
        return out;
    };
    if let Some(d) = duration(doc, &mut t, "connect") {
        out.connect = d;
    }
    if let Some(d) = duration(doc, &mut t, "read") {
        out.read = d;
    }
    if let Some(d) = duration(doc, &mut t, "write") {
        out.write = d;
    }
    t.finish(doc);
    out
}

fn read_slot(
    doc: &mut Doc,
    mut t: Table,
    name: Option<&At<String>>,
    hosts_seen: &mut HashMap<String, (String, usize)>,
) -> Option<SlotConfig> {
    let errors_before = doc.errors.len();
    let mut hosts = Vec::new();
    match t.strings(doc, "hosts") {
        None if !t.has("hosts") => doc.error(
            &t.span,
            &t.path,
            "missing key `hosts`",
            Some(r#"every slot needs at least one hostname, e.g. hosts = ["staging.shop.example.com"]"#.into()),
        ),
        None => {}
        Some(list) => {
            if list.is_empty() {
                doc.error(
                    &t.value_span("hosts").unwrap_or(t.span.clone()),
                    &t.key_path("hosts"),
                    "needs at least one hostname",
                    None,
                );
            }
            for h in list {
                match model::normalize_host(&h.value) {
                    Err(why) => doc.error(&h.span, &h.key, why, None),
                    Ok(host) => {
                        let line = doc.line_of(h.span.start);
                        if let Some((owner, first)) = hosts_seen.get(&host) {
                            doc.error(
                                &h.span,
                                &h.key,
                                format!("host `{host}` is already used by {owner} (line {first})"),
                                Some("a hostname routes to exactly one slot".into()),
                            );
                        } else {
                            hosts_seen.insert(host.clone(), (t.path.clone(), line));
                            hosts.push(host);
                        }
                    }
                }
            }
        }
    }
    let instances = t.strings(doc, "instances").unwrap_or_default();
    for i in &instances {
        if let Err(why) = model::check_instance_address(&i.value) {
            doc.error(
                &i.span,
                &i.key,
                why,
                Some(r#"write host:port, e.g. "127.0.0.1:9001""#.into()),
            );
        }
    }
    let version = t.string(doc, "version");
    if let Some(v) = &version {
        if let Err(why) = model::check_version(&v.value) {
            doc.error(&v.span, &v.key, why, None);
        }
    }
    let initial = match (&version, instances.is_empty()) {
        (Some(v), false) => Some(InitialDeployment {
            version: v.value.clone(),
            instances: instances.iter().map(|i| i.value.clone()).collect(),
        }),
        (None, false) if t.has("version") => None, // wrong type: already reported
        (None, false) => {
            doc.error(
                &instances[0].span,
                &t.key_path("version"),
                "instances are listed but no version is given",
                Some(
                    r#"add version = "v1"; any label that tells deployments apart will do"#.into(),
                ),
            );
            None
        }
        (Some(v), true) if t.has("instances") => {
            doc.error(&t.value_span("instances").unwrap_or(v.span.clone()), &t.key_path("instances"), "is empty", Some("list at least one host:port, or remove version and instances to leave the slot empty".into()));
            None
        }
        (Some(v), true) => {
            doc.error(
                &v.span,
                &v.key,
                "a version without instances",
                Some(
                    "add instances = [\"host:port\"], or remove version to leave the slot empty"
                        .into(),
                ),
            );
            None
        }
        (None, true) => None,
    };
    let mut headers = Vec::new();
    for (k, v) in t.string_map(doc, "headers").unwrap_or_default() {
        if check_header_name(doc, &k).is_some() && check_header_value(doc, &v) {
            if headers
                .iter()
                .any(|(n, _): &(String, String)| n.eq_ignore_ascii_case(&k.value))
            {
                doc.error(
                    &k.span,
                    &k.key,
                    "header is set twice (names are case-insensitive)",
                    None,
                );
            } else {
                headers.push((k.value, v.value));
            }
        }
    }
    let sticky_settings: Vec<String> = t
        .strings(doc, "sticky_settings")
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.value)
        .collect();
    let mut settings = BTreeMap::new();
    for (k, v) in t.string_map(doc, "settings").unwrap_or_default() {
        settings.insert(k.value, v.value);
    }
    t.finish(doc);
    if doc.errors.len() > errors_before {
        return None;
    }
    Some(SlotConfig {
        name: name?.value.clone(),
        hosts,
        initial,
        headers,
        auto_swap: None,
        sticky_settings,
        settings,
    })
}

fn check_header_name(doc: &mut Doc, k: &At<String>) -> Option<()> {
    match model::check_header_name(&k.value) {
        Ok(()) => Some(()),
        Err(why) => {
            doc.error(&k.span, &k.key, why, None);
            None
        }
    }
}

fn check_header_value(doc: &mut Doc, v: &At<String>) -> bool {
    if http::HeaderValue::from_str(&v.value).is_err() {
        doc.error(
            &v.span,
            &v.key,
            "is not a valid header value (control characters are not allowed)",
            None,
        );
        return false;
    }
    true
}

fn duration(doc: &mut Doc, t: &mut Table, key: &'static str) -> Option<Duration> {
    let s = t.string_hinted(doc, key, Some(DURATION_HINT));
    if s.is_none() && t.has(key) {
        return None;
    }
    let s = s?;
    match parse_duration(&s.value) {
        Ok(d) if d.is_zero() => {
            doc.error(&s.span, &s.key, "must be longer than zero", None);
            None
        }
        Ok(d) => Some(d),
        Err(why) => {
            doc.error(
                &s.span,
                &s.key,
                why,
                Some(r#"write e.g. "500ms", "30s", "2m" or "1h""#.into()),
            );
            None
        }
    }
}

const DURATION_HINT: &str = r#"write a quoted duration, e.g. "500ms", "30s", "2m" or "1h""#;

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
