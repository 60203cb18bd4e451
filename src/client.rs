//! The CLI's side of the admin API: one HTTP/1.1 request per command, and the
//! readable tables the commands print.
//!
//! Exit status contract: 0 success, 1 the server said no (its message is printed),
//! 2 usage or connection error. A swap that ran and ended `failed` is a "no".

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// Why a command did not succeed, and its exit status.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Exit 1: the server answered with an error.
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// Exit 2: the server could not be reached or did not answer HTTP.
    #[error("{0}")]
    Connection(String),
    /// Exit 2: bad arguments.
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Refused { .. } => 1,
            ClientError::Connection(_) | ClientError::Usage(_) => 2,
        }
    }
}

/// Talks to one admin API.
pub struct AdminClient {
    authority: String,
    base_path: String,
    token: Option<String>,
    timeout: Duration,
}

impl AdminClient {
    /// `admin` is like `http://127.0.0.1:9901`.
    pub fn new(admin: &str, token: Option<String>, timeout: Duration) -> Result<Self, ClientError> {
        let uri: Uri = admin
            .parse()
            .map_err(|e| ClientError::Usage(format!("--admin `{admin}` is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(ClientError::Usage(format!(
                    "--admin `{admin}`: scheme {other} is not supported; use http://HOST:PORT"
                )))
            }
            None => {
                return Err(ClientError::Usage(format!(
                    "--admin `{admin}` has no scheme; write http://{admin}"
                )))
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| ClientError::Usage(format!("--admin `{admin}` has no host")))?;
        let authority = if authority.port().is_some() {
            authority.to_string()
        } else {
            format!("{}:80", authority.host())
        };
        Ok(AdminClient {
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
            token: token
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            timeout,
        })
    }

    /// Sends one request; a 2xx answer's JSON body, or the server's error message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Connection(format!(
                    "no answer from the slotd admin API at http://{} within {}s (raise --timeout if a swap's warm-up needs longer)",
                    self.authority,
                    self.timeout.as_secs()
                )))
            })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let conn_err = |what: &str, e: &dyn std::fmt::Display| {
            ClientError::Connection(format!(
                "cannot reach the slotd admin API at http://{}: {what}: {e} (is `slotd serve` running? set --admin or SLOTD_ADMIN)",
                self.authority
            ))
        };
        let stream =
            tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&self.authority))
                .await
                .map_err(|e| conn_err("connect", &e))?
                .map_err(|e| conn_err("connect", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| conn_err("handshake", &e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_path))
            .header(http::header::HOST, &self.authority)
            .header(
                http::header::USER_AGENT,
                concat!("slotd-cli/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let payload = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ClientError::Usage(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| conn_err("request", &e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| conn_err("reading the answer", &e))?
            .to_bytes();
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return json.ok_or_else(|| {
                ClientError::Connection(format!(
                    "http://{} answered {status} without JSON; is it a slotd admin API?",
                    self.authority
                ))
            });
        }
        let message = json
            .as_ref()
            .and_then(|j| j["error"]["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        Err(ClientError::Refused {
            status: status.as_u16(),
            message: format!("{status}: {message}"),
        })
    }
}

/// Percent-encodes a path segment (app and slot names are plain, but be safe).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// === printing ===

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `slotd status`: one table per app.
pub fn print_app(app: &Value) -> String {
    let mut rows = Vec::new();
    for slot in app["slots"].as_array().into_iter().flatten() {
        let d = &slot["deployment"];
        let instances = d["instances"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|i| {
                        let mark = if i["healthy"].as_bool() == Some(true) {
                            ""
                        } else {
                            " (unhealthy)"
                        };
                        format!("{}{mark}", s(&i["address"]))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "-".into());
        let hosts = slot["hosts"]
            .as_array()
            .map(|h| h.iter().map(s).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        rows.push(vec![
            s(&slot["name"]),
            hosts,
            s(&d["version"]),
            s(&d["id"]),
            instances,
        ]);
    }
    let mut out = format!("app {}\n", s(&app["name"]));
    out.push_str(&table(
        &["SLOT", "HOSTS", "VERSION", "DEPLOYMENT", "INSTANCES"],
        &rows,
    ));
    let name = s(&app["name"]);
    if let Some(rules) = app["routing"]["rules"].as_array().filter(|r| !r.is_empty()) {
        let shares: Vec<String> = rules
            .iter()
            .map(|r| format!("{} {}%", s(&r["slot"]), r["percent"]))
            .collect();
        out.push_str(&format!(
            "testing in production: new visitors of production go to {} (pin generation {}); `slotd route --app {name} --slot SLOT --remove` ends it\n",
            shares.join(", "),
            app["routing"]["pin_generation"]
        ));
    }
    if let Some(p) = app["current_swap"].as_object() {
        let what = format!(
            "swap {} of {} into {}",
            s(&p["id"]),
            s(&p["source"]),
            s(&p["target"])
        );
        if p["state"] == "preview" {
            out.push_str(&format!(
                "{what} is waiting in preview: `slotd swap complete --app {name}` or `slotd swap cancel --app {name}`\n"
            ));
        } else {
            let phase = p["phases"]
                .as_array()
                .and_then(|ph| ph.last())
                .map(|ph| format!(" (last finished phase: {})", s(&ph["name"])))
                .unwrap_or_default();
            out.push_str(&format!("{what} is running{phase}\n"));
        }
    }
    out
}

/// A swap record with its phases.
pub fn print_swap(rec: &Value) -> String {
    let mut out = format!(
        "swap {} of app {}: {} -> {}: {}\n",
        s(&rec["id"]),
        s(&rec["app"]),
        s(&rec["source"]),
        s(&rec["target"]),
        s(&rec["state"]).to_uppercase()
    );
    let rows: Vec<Vec<String>> = rec["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                s(&p["name"]),
                if p["ok"].as_bool() == Some(true) {
                    "ok".into()
                } else {
                    "FAILED".into()
                },
                format!("{}ms", s(&p["duration_ms"])),
                s(&p["detail"]),
            ]
        })
        .collect();
    out.push_str(&table(&["PHASE", "RESULT", "TIME", "DETAIL"], &rows));
    if let Some(e) = rec["error"].as_str() {
        out.push_str(&format!("error: {e}\n"));
    }
    if rec["state"] == "preview" {
        out.push_str(&format!(
            "routing is unchanged; run `slotd swap complete --app {0}` to switch or `slotd swap cancel --app {0}`\n",
            s(&rec["app"])
        ));
    }
    out
}

/// `slotd route`: an app's routing rules.
pub fn print_routing(v: &Value) -> String {
    let rules = v["rules"].as_array().cloned().unwrap_or_default();
    let mut out = if rules.is_empty() {
        "no routing rules: production takes every visitor\n".to_string()
    } else {
        let rows: Vec<Vec<String>> = rules
            .iter()
            .map(|r| vec![s(&r["slot"]), format!("{}%", r["percent"])])
            .collect();
        table(&["SLOT", "NEW VISITORS"], &rows)
    };
    out.push_str(&format!("pin generation {}\n", v["pin_generation"]));
    out
}

pub fn print_reload(v: &Value) -> String {
    let o = &v["outcome"];
    let mut out = format!(
        "reloaded {}: routing generation {}, {} app(s)\n",
        o["file"].as_str().unwrap_or("?"),
        o["generation"],
        o["apps"]
    );
    let pending: Vec<&str> = o["restart_required"]
        .as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !pending.is_empty() {
        out.push_str(&format!(
            "changed but kept until a restart: {}\n",
            pending.join(", ")
        ));
    }
    out
}

pub fn print_history(swaps: &Value) -> String {
    let rows: Vec<Vec<String>> = swaps["swaps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let moved = format!(
                "{} ({}) -> {}",
                s(&r["source"]),
                s(&r["source_deployment"]["version"]),
                s(&r["target"])
            );
            vec![
                s(&r["id"]),
                s(&r["started_at"]),
                moved,
                s(&r["trigger"]),
                s(&r["state"]),
                r["error"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no swaps yet\n".into();
    }
    table(
        &["ID", "STARTED", "SWAP", "TRIGGER", "STATE", "ERROR"],
        &rows,
    )
}

/// A dry-run plan.
pub fn print_plan(plan: &Value) -> String {
    let mut out = format!(
        "dry run: swap {} -> {} of app {} (nothing was changed)\n",
        s(&plan["source"]),
        s(&plan["target"]),
        s(&plan["app"])
    );
    for m in plan["moves"].as_array().into_iter().flatten() {
        let d = &m["deployment"];
        let name = if d.is_null() {
            "nothing".to_string()
        } else {
            format!("{} ({})", s(&d["id"]), s(&d["version"]))
        };
        out.push_str(&format!("  {name}: {} -> {}\n", s(&m["from"]), s(&m["to"])));
        diff_lines(
            &mut out,
            "header",
            &m["headers_before"],
            &m["headers_after"],
        );
        diff_lines(
            &mut out,
            "setting",
            &m["settings_before"],
            &m["settings_after"],
        );
    }
    let w = &plan["warmup"];
    out.push_str(&format!(
        "  warm-up: GET {} with Host {} on {}\n",
        s(&w["path"]),
        s(&w["host"]),
        w["instances"]
            .as_array()
            .map(|l| l.iter().map(s).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    ));
    for w in plan["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("  warning: {}\n", s(w)));
    }
    out
}

/// One line per key whose value differs between two JSON objects of strings.
fn diff_lines(out: &mut String, what: &str, before: &Value, after: &Value) {
    let (before, after) = (before.as_object(), after.as_object());
    let mut keys: Vec<&String> = before
        .into_iter()
        .flat_map(|o| o.keys())
        .chain(after.into_iter().flat_map(|o| o.keys()))
        .collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let b = before.and_then(|o| o.get(k)).map(s);
        let a = after.and_then(|o| o.get(k)).map(s);
        if a != b {
            out.push_str(&format!(
                "      {what} {k}: {} -> {}\n",
                b.unwrap_or_else(|| "(none)".into()),
                a.unwrap_or_else(|| "(none)".into())
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn status_shows_routing_rules_and_the_swap_in_progress() {
        let mut app = json!({
            "name": "shop",
            "slots": [{"name": "production", "hosts": ["shop.test"],
                       "deployment": {"version": "v1", "id": "d1",
                                      "instances": [{"address": "127.0.0.1:1", "healthy": true}]}}],
            "routing": {"rules": [], "pin_generation": 0},
            "current_swap": null,
        });
        let plain = print_app(&app);
        assert!(!plain.contains("testing in production"), "{plain}");
        assert!(!plain.contains("swap"), "{plain}");

        app["routing"] =
            json!({"rules": [{"slot": "staging", "percent": 10}], "pin_generation": 2});
        app["current_swap"] = json!({"id": "s-1", "source": "staging", "target": "production",
                                     "state": "running", "phases": [{"name": "warmup"}]});
        let out = print_app(&app);
        assert!(
            out.contains("new visitors of production go to staging 10% (pin generation 2)"),
            "{out}"
        );
        assert!(
            out.contains(
                "swap s-1 of staging into production is running (last finished phase: warmup)"
            ),
            "{out}"
        );

        app["current_swap"]["state"] = json!("preview");
        let out = print_app(&app);
        assert!(
            out.contains("is waiting in preview: `slotd swap complete --app shop`"),
            "{out}"
        );
    }

    #[test]
    fn admin_urls() {
        const T: Duration = Duration::from_secs(1);
        assert!(AdminClient::new("http://127.0.0.1:9901", None, T).is_ok());
        assert_eq!(
            AdminClient::new("http://localhost", None, T)
                .unwrap()
                .authority,
            "localhost:80"
        );
        assert!(matches!(
            AdminClient::new("127.0.0.1:9901", None, T),
            Err(ClientError::Usage(_))
        ));
        assert!(matches!(
            AdminClient::new("https://x:1", None, T),
            Err(ClientError::Usage(_))
        ));
    }
}
