//! The `[[app]]` tables of the config file: warm-up, timeouts, settings headers and
//! `[[app.slot]]`s, with the checks that span them (unique hosts, a `production`
//! slot, `auto_swap` targets).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::reader::{At, Doc, Table};
use super::{
    parse_duration, parse_size, ActiveCheck, AppConfig, AppLimits, HealthConfig, InitialDeployment,
    SlotConfig, TimeoutConfig, WarmupConfig, DURATION_HINT, SIZE_HINT,
};
use crate::model::{self, MAX_SLOTS_PER_APP, PRODUCTION};

pub(super) fn read_apps(doc: &mut Doc, root: &mut Table) -> Vec<AppConfig> {
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
    let health = read_health(doc, &mut t);
    let limits = read_limits(doc, &mut t);
    let retries = t
        .integer(doc, "retries", 0, 10)
        .map_or(1, |n| n.value as u32);
    let drain_timeout = duration(doc, &mut t, "drain_timeout").unwrap_or(Duration::from_secs(300));
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
            } else if n.value == "self" {
                doc.error(
                    &n.span,
                    &n.key,
                    "`self` cannot name a slot: x-slot-routing-name=self means production",
                    Some("pick another name".into()),
                );
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
        if let Some(slot) = read_slot(doc, st, sname.as_ref(), hosts_seen, &headers_out) {
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
        health,
        limits,
        retries,
        drain_timeout,
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
    if let Some(d) = duration(doc, &mut t, "idle") {
        out.idle = d;
    }
    out.total = duration(doc, &mut t, "total");
    t.finish(doc);
    out
}

fn read_health(doc: &mut Doc, app: &mut Table) -> HealthConfig {
    let mut out = HealthConfig::default();
    let Some(mut t) = app.table(doc, "health") else {
        return out;
    };
    if let Some(p) = t.string(doc, "check_path") {
        if check_path(doc, &p) {
            let mut check = ActiveCheck {
                path: p.value,
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                healthy_threshold: 2,
                unhealthy_threshold: 3,
                statuses: Vec::new(),
            };
            if let Some(d) = duration(doc, &mut t, "check_interval") {
                check.interval = d;
            }
            if let Some(d) = duration(doc, &mut t, "check_timeout") {
                check.timeout = d;
            }
            if let Some(n) = t.integer(doc, "healthy_threshold", 1, 100) {
                check.healthy_threshold = n.value as u32;
            }
            if let Some(n) = t.integer(doc, "unhealthy_threshold", 1, 100) {
                check.unhealthy_threshold = n.value as u32;
            }
            if let Some(list) = t.integers(doc, "check_statuses", 100, 599) {
                check.statuses = list.into_iter().map(|s| s.value as u16).collect();
            }
            out.check = Some(check);
        }
    } else {
        for key in [
            "check_interval",
            "check_timeout",
            "healthy_threshold",
            "unhealthy_threshold",
            "check_statuses",
        ] {
            if t.has(key) {
                doc.error(
                    &t.key_span(key).unwrap_or(t.span.clone()),
                    &t.key_path(key),
                    "only applies to active checks, which are off without `check_path`",
                    Some(r#"add check_path = "/healthz" (the path every instance answers)"#.into()),
                );
            }
        }
    }
    if let Some(n) = t.integer(doc, "max_failures", 0, 1000) {
        out.max_failures = n.value as u32;
    }
    if let Some(d) = duration(doc, &mut t, "ejection_time") {
        out.ejection_time = d;
    }
    if let Some(b) = t.boolean(doc, "fail_open") {
        out.fail_open = b.value;
    }
    t.finish(doc);
    out
}

fn read_limits(doc: &mut Doc, app: &mut Table) -> AppLimits {
    let mut out = AppLimits::default();
    let Some(mut t) = app.table(doc, "limits") else {
        return out;
    };
    out.max_body_size = size(doc, &mut t, "max_body_size");
    t.finish(doc);
    out
}

/// A byte size: an integer, or a string like `"512KiB"`, `"10MiB"`, `"1GiB"`.
pub(super) fn size(doc: &mut Doc, t: &mut Table, key: &'static str) -> Option<u64> {
    if t.is_integer(key) {
        return t.integer(doc, key, 1, i64::MAX).map(|n| n.value as u64);
    }
    let s = t.string_hinted(doc, key, Some(SIZE_HINT))?;
    match parse_size(&s.value) {
        Ok(0) => {
            doc.error(&s.span, &s.key, "must be larger than zero", None);
            None
        }
        Ok(n) => Some(n),
        Err(why) => {
            doc.error(&s.span, &s.key, why, Some(SIZE_HINT.into()));
            None
        }
    }
}

/// A request path for a check: starts with `/`, no spaces or control characters.
fn check_path(doc: &mut Doc, p: &At<String>) -> bool {
    if !p.value.starts_with('/') || p.value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        doc.error(
            &p.span,
            &p.key,
            format!("`{}` is not a request path", p.value),
            Some("start it with /, e.g. \"/healthz\"".into()),
        );
        return false;
    }
    true
}

fn read_slot(
    doc: &mut Doc,
    mut t: Table,
    name: Option<&At<String>>,
    hosts_seen: &mut HashMap<String, (String, usize)>,
    settings_headers: &[(String, String)],
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
    for (n, i) in instances.iter().enumerate() {
        if let Err(why) = model::check_instance_address(&i.value) {
            doc.error(
                &i.span,
                &i.key,
                why,
                Some(r#"write host:port, e.g. "127.0.0.1:9001""#.into()),
            );
        } else if instances[..n].iter().any(|j| j.value == i.value) {
            doc.error(
                &i.span,
                &i.key,
                format!("`{}` is listed twice", i.value),
                Some("list each instance once".into()),
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
        // A setting sent as a header must be a valid header value.
        if settings_headers.iter().any(|(s, _)| s == &k.value) && !check_header_value(doc, &v) {
            continue;
        }
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

/// The longest duration any setting takes.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

pub(super) fn duration(doc: &mut Doc, t: &mut Table, key: &'static str) -> Option<Duration> {
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
        Ok(d) if d > MAX_DURATION => {
            doc.error(
                &s.span,
                &s.key,
                "is longer than 24h",
                Some("durations are capped at 24h".into()),
            );
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
