//! The `[proxy]`, `[admin]` and `[state]` sections of the config file.

use std::net::SocketAddr;
use std::path::Path;

use super::apps::{duration, size};
use super::reader::{At, Doc, Table};
use super::{AdminAuth, AdminConfig, ClientLimits, ProxyConfig, StateConfig};

const DEFAULT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) fn read_proxy(doc: &mut Doc, root: &mut Table) -> Option<ProxyConfig> {
    let default_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(mut t) = root.table(doc, "proxy") else {
        return Some(ProxyConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            threads: default_threads,
            access_log: false,
            client: ClientLimits::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
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
    let access_log = match t.boolean(doc, "access_log") {
        Some(v) => v.value,
        None if t.has("access_log") => {
            ok = false;
            false
        }
        None => false,
    };
    let errors_before = doc.errors.len();
    let mut client = ClientLimits::default();
    if let Some(d) = duration(doc, &mut t, "header_timeout") {
        client.header_timeout = d;
    }
    if let Some(d) = duration(doc, &mut t, "keepalive_timeout") {
        client.keepalive_timeout = d;
    }
    if let Some(d) = duration(doc, &mut t, "body_timeout") {
        client.body_timeout = d;
    }
    if let Some(d) = duration(doc, &mut t, "send_timeout") {
        client.send_timeout = d;
    }
    // Pingora refuses heads over 1 MiB and more than 256 headers itself (with 400).
    if let Some(n) = size(doc, &mut t, "max_header_size") {
        client.max_header_size = bounded(doc, &t, "max_header_size", n, 1024, 1024 * 1024);
    }
    if let Some(n) = t.integer(doc, "max_headers", 1, 256) {
        client.max_headers = n.value as usize;
    }
    if let Some(n) = size(doc, &mut t, "max_uri_length") {
        client.max_uri_length = bounded(doc, &t, "max_uri_length", n, 64, 1024 * 1024);
    }
    let shutdown_grace = duration(doc, &mut t, "shutdown_grace").unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    ok &= doc.errors.len() == errors_before;
    t.finish(doc);
    ok.then_some(ProxyConfig {
        listen,
        threads,
        access_log,
        client,
        shutdown_grace,
    })
}

/// `n` if within `min..=max` bytes, else reported (and `min` returned).
fn bounded(doc: &mut Doc, t: &Table, key: &str, n: u64, min: u64, max: u64) -> usize {
    if (min..=max).contains(&n) {
        return n as usize;
    }
    doc.error(
        &t.value_span(key).unwrap_or(t.span.clone()),
        &t.key_path(key),
        format!("{n} bytes is out of range: must be between {min} and {max} bytes"),
        None,
    );
    min as usize
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

pub(super) fn read_admin(doc: &mut Doc, root: &mut Table, folder: &Path) -> Option<AdminConfig> {
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

pub(super) fn read_state(doc: &mut Doc, root: &mut Table, folder: &Path) -> Option<StateConfig> {
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
