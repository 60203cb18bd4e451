//! The data slotd keeps: apps, slots, deployments, swap records, and the persisted
//! [`State`]. Pure data with serde and the validation rules for names, hosts and
//! addresses that the config file and the admin API share. No I/O here.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The slot every app has; the default swap target.
pub const PRODUCTION: &str = "production";
/// Most slots one app may have.
pub const MAX_SLOTS_PER_APP: usize = 20;
/// Most instances one deployment may list.
pub const MAX_INSTANCES: usize = 1000;
/// Swap records kept per app, newest first.
pub const HISTORY_LIMIT: usize = 100;

// === validation shared by the config file and the admin API ===

/// App and slot names: 1-63 characters of `a-z A-Z 0-9 . _ -`, starting alphanumeric.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 63 {
        return Err(format!("`{name}` is longer than 63 characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "`{name}` is not a valid name: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// A deployment version label: 1-128 printable characters without spaces.
pub fn check_version(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("version is empty".into());
    }
    if v.len() > 128 {
        return Err("version is longer than 128 characters".into());
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "version `{}` contains spaces or control characters",
            v.escape_debug()
        ));
    }
    Ok(())
}

/// An upstream instance: `host:port` or `[v6]:port`, port 1-65535.
pub fn check_instance_address(addr: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "`{}` is not a valid instance address: {why}",
            addr.escape_debug()
        ))
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("it has no port");
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return bad("the port must be a number from 1 to 65535"),
        Ok(_) => {}
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("the bracketed part is not an IPv6 address");
        }
        return Ok(());
    }
    if host.is_empty() {
        return bad("the host is empty");
    }
    if host.contains(':') {
        return bad("write IPv6 addresses in brackets, e.g. [::1]:9001");
    }
    if host.parse::<std::net::Ipv4Addr>().is_err() && normalize_host(host).is_err() {
        return bad("the host is neither an IP address nor a hostname");
    }
    Ok(())
}

/// Lower-cases and checks a hostname used for routing. Ports are not part of it.
pub fn normalize_host(host: &str) -> Result<String, String> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h.is_empty() {
        return Err("hostname is empty".into());
    }
    if h.len() > 253 {
        return Err(format!("hostname `{h}` is longer than 253 characters"));
    }
    if let Some((_, port)) = h.rsplit_once(':') {
        if port.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "hostname `{h}` has a port: hosts are matched without one, so remove `:{port}`"
            ));
        }
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !h.split('.').all(label_ok) {
        return Err(format!(
            "`{}` is not a valid hostname: use letters, digits, '-' and dots",
            host.escape_debug()
        ));
    }
    Ok(h)
}

/// A header name users may set on upstream requests.
pub fn check_header_name(name: &str) -> Result<(), String> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!(
            "`{}` is not a valid header name",
            name.escape_debug()
        ));
    }
    const RESERVED: [&str; 12] = [
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "content-length",
        "te",
        "trailer",
        "upgrade",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    ];
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) {
        return Err(format!(
            "header `{name}` is managed by slotd and cannot be set here"
        ));
    }
    Ok(())
}

// === persisted state ===

/// Everything the state store holds: per app, what each slot serves and what happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version of this document.
    pub format: u32,
    pub apps: BTreeMap<String, AppState>,
}

pub const STATE_FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppState {
    /// Slot name → the deployment it holds (`None`: empty slot).
    pub slots: BTreeMap<String, Option<Deployment>>,
    /// A swap stopped in `preview`, waiting for `complete` or `cancel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_swap: Option<SwapRecord>,
    /// Finished swaps, newest first, at most [`HISTORY_LIMIT`].
    #[serde(default)]
    pub history: Vec<SwapRecord>,
    /// Sequence numbers for ids.
    #[serde(default)]
    pub next_deployment: u64,
    #[serde(default)]
    pub next_swap: u64,
    /// Testing in production: shares of new production visitors sent to other slots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing_rules: Vec<RoutingRule>,
    /// Bumped to unpin every visitor (`--reset-pins`): pins carry the generation
    /// they were made in, and older ones are ignored.
    #[serde(default)]
    pub pin_generation: u64,
}

/// `{slot, percent}`: that share of new production visitors goes to `slot` and is
/// pinned there by the `x-slot-routing-name` cookie; 0 takes opted-in visitors only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingRule {
    pub slot: String,
    pub percent: u8,
}

impl AppState {
    pub fn deployment(&self, slot: &str) -> Option<&Deployment> {
        self.slots.get(slot).and_then(|d| d.as_ref())
    }

    /// Adds a finished swap record at the front of the history.
    pub fn record(&mut self, rec: SwapRecord) {
        self.count_swap(&rec.id);
        self.history.insert(0, rec);
        self.history.truncate(HISTORY_LIMIT);
    }

    pub fn new_deployment_id(&mut self) -> String {
        self.next_deployment = self.next_deployment.saturating_add(1);
        format!("d{}", self.next_deployment)
    }

    /// The id the next swap of this app gets (`s1`, `s2`, ...). It is taken once a
    /// record with it is stored ([`Self::record`], [`Self::count_swap`]).
    pub fn upcoming_swap_id(&self) -> String {
        format!("s{}", self.next_swap.saturating_add(1))
    }

    /// Marks a swap id as taken.
    pub fn count_swap(&mut self, id: &str) {
        let seq = id.trim_start_matches('s').parse().unwrap_or(0);
        self.next_swap = self.next_swap.max(seq);
    }
}

/// A versioned pool of upstream instances and the settings that travel with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub id: String,
    pub version: String,
    pub instances: Vec<String>,
    /// Settings that travel with the deployment (the slot's sticky ones do not).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    pub created_at: String,
}

/// Short reference to a deployment, kept in swap records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRef {
    pub id: String,
    pub version: String,
}

impl From<&Deployment> for DeploymentRef {
    fn from(d: &Deployment) -> Self {
        DeploymentRef {
            id: d.id.clone(),
            version: d.version.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwapState {
    Running,
    Preview,
    Completed,
    Failed,
    Cancelled,
}

impl SwapState {
    pub fn as_str(self) -> &'static str {
        match self {
            SwapState::Running => "running",
            SwapState::Preview => "preview",
            SwapState::Completed => "completed",
            SwapState::Failed => "failed",
            SwapState::Cancelled => "cancelled",
        }
    }
}

/// What started a swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwapTrigger {
    Api,
    Rollback,
    AutoSwap,
}

/// One phase of a swap as it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub name: String,
    pub started_at: String,
    pub duration_ms: u64,
    pub ok: bool,
    pub detail: String,
}

/// The record of one swap: what was asked, each phase, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapRecord {
    pub id: String,
    pub app: String,
    pub source: String,
    pub target: String,
    pub state: SwapState,
    pub trigger: SwapTrigger,
    /// For a rollback: the swap it reverses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub phases: Vec<PhaseRecord>,
    pub error: Option<String>,
    /// The deployments in source and target when the swap began.
    pub source_deployment: Option<DeploymentRef>,
    pub target_deployment: Option<DeploymentRef>,
}

// === time ===

/// Now as an RFC 3339 UTC timestamp with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

pub fn rfc3339(t: SystemTime) -> String {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn instance_addresses() {
        assert!(check_instance_address("127.0.0.1:9001").is_ok());
        assert!(check_instance_address("app-1.internal:80").is_ok());
        assert!(check_instance_address("[::1]:9001").is_ok());
        assert!(check_instance_address("127.0.0.1").is_err());
        assert!(check_instance_address("127.0.0.1:0").is_err());
        assert!(check_instance_address("127.0.0.1:99999").is_err());
        assert!(check_instance_address(":80").is_err());
        assert!(check_instance_address("::1:80").is_err());
        assert!(check_instance_address("bad host:80").is_err());
    }

    #[test]
    fn hosts_are_lowercased_and_portless() {
        assert_eq!(
            normalize_host("Shop.Example.COM").unwrap(),
            "shop.example.com"
        );
        assert!(normalize_host("shop.example.com:8080").is_err());
        assert!(normalize_host("-bad.example").is_err());
        assert!(normalize_host("").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("shop").is_ok());
        assert!(check_name("blue-green_2.0").is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"x".repeat(64)).is_err());
    }

    #[test]
    fn managed_headers_are_refused() {
        assert!(check_header_name("X-Slot").is_ok());
        assert!(check_header_name("Host").is_err());
        assert!(check_header_name("x-forwarded-proto").is_err());
        assert!(check_header_name("bad header").is_err());
    }
}
