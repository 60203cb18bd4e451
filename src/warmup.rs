//! Warm-up: HTTP requests sent straight to every instance of a pool (not through the
//! proxy), all instances in parallel, until each has answered well enough times.
//!
//! Each attempt opens its own connection with a per-request deadline; an instance that
//! refuses, hangs or answers a status outside the accepted list is retried after
//! `retry_interval` until the pool's overall deadline. The result says, per instance,
//! whether it warmed and, if not, the last reason.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::WarmupConfig;

/// What to send and what to accept.
#[derive(Debug, Clone)]
pub struct WarmupPlan {
    pub path: String,
    /// `Host` header: the first hostname of the slot the pool is about to serve.
    pub host: String,
    /// The sticky headers of that slot.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub config: WarmupConfig,
}

/// How one instance did.
#[derive(Debug, Clone)]
pub struct InstanceWarmup {
    pub address: String,
    pub ok: bool,
    pub attempts: u32,
    /// Attempts answered with an accepted status.
    pub successes: u32,
    pub error: Option<String>,
}

impl WarmupPlan {
    fn accepted(&self, status: u16) -> bool {
        self.config.statuses.is_empty() || self.config.statuses.contains(&status)
    }
}

/// Warms every instance in parallel; returns one result per instance, in order.
pub async fn warm_up(instances: &[String], plan: &WarmupPlan) -> Vec<InstanceWarmup> {
    let deadline = Instant::now() + plan.config.timeout;
    let mut set = tokio::task::JoinSet::new();
    for (i, address) in instances.iter().enumerate() {
        let address = address.clone();
        let plan = plan.clone();
        set.spawn(async move { (i, warm_instance(address, &plan, deadline).await) });
    }
    let mut out: Vec<Option<InstanceWarmup>> = vec![None; instances.len()];
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, r)) => out[i] = Some(r),
            Err(e) => tracing::error!(error = %e, "warm-up task failed"),
        }
    }
    out.into_iter()
        .zip(instances)
        .map(|(r, address)| {
            r.unwrap_or_else(|| InstanceWarmup {
                address: address.clone(),
                ok: false,
                attempts: 0,
                successes: 0,
                error: Some("warm-up task failed".into()),
            })
        })
        .collect()
}

async fn warm_instance(address: String, plan: &WarmupPlan, deadline: Instant) -> InstanceWarmup {
    let mut successes = 0;
    let mut attempts = 0;
    let mut error = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let budget = plan.config.request_timeout.min(deadline - now);
        attempts += 1;
        let probe = get_status(
            &address,
            &plan.path,
            &plan.host,
            &plan.headers,
            concat!("slotd-warmup/", env!("CARGO_PKG_VERSION")),
        );
        match tokio::time::timeout(budget, probe).await {
            Ok(Ok(status)) if plan.accepted(status) => {
                successes += 1;
                if successes >= plan.config.requests {
                    return InstanceWarmup {
                        address,
                        ok: true,
                        attempts,
                        successes,
                        error: None,
                    };
                }
                continue;
            }
            Ok(Ok(status)) => {
                error = Some(format!(
                    "answered {status}, accepted statuses are {:?}",
                    plan.config.statuses
                ))
            }
            Ok(Err(e)) => error = Some(e),
            Err(_) => error = Some(format!("no answer within {}ms", budget.as_millis())),
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(plan.config.retry_interval.min(deadline - now)).await;
    }
    let reason = error.unwrap_or_else(|| "the warm-up deadline passed before any request".into());
    InstanceWarmup {
        error: Some(format!(
            "{reason} (after {attempts} attempts in {})",
            fmt_duration(plan.config.timeout)
        )),
        address,
        ok: false,
        attempts,
        successes,
    }
}

/// One `GET path` on a fresh connection to `address` (warm-up and health checks);
/// the status it got once the whole body was read (and dropped). The caller bounds
/// its time.
pub(crate) async fn get_status(
    address: &str,
    path: &str,
    host: &str,
    headers: &[(HeaderName, HeaderValue)],
    user_agent: &'static str,
) -> Result<u16, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let mut req = Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, user_agent)
        .header(http::header::CONNECTION, "close");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let exchange = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status().as_u16();
        // Read to the end, frame by frame, keeping nothing: an instance that answers
        // with a huge body costs time (bounded by the caller), not memory.
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| format!("answered {status} but the body failed: {e}"))?;
        }
        Ok(status)
    };
    tokio::pin!(exchange);
    tokio::pin!(conn);
    tokio::select! {
        biased;
        r = &mut exchange => r,
        _ = &mut conn => exchange.await,
    }
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(statuses: Vec<u16>, timeout_ms: u64) -> WarmupPlan {
        WarmupPlan {
            path: "/".into(),
            host: "shop.example.com".into(),
            headers: vec![],
            config: WarmupConfig {
                statuses,
                timeout: Duration::from_millis(timeout_ms),
                request_timeout: Duration::from_millis(200),
                retry_interval: Duration::from_millis(20),
                ..WarmupConfig::default()
            },
        }
    }

    #[tokio::test]
    async fn a_refusing_instance_fails_with_the_reason() {
        // Port 1 on a loopback address nothing else uses: refused, and no other
        // test can start listening there meanwhile.
        let addr = "127.0.9.9:1".to_string();
        let r = warm_up(std::slice::from_ref(&addr), &plan(vec![], 300)).await;
        assert!(!r[0].ok);
        assert!(r[0].attempts >= 2, "{r:?}");
        let e = r[0].error.as_deref().unwrap();
        assert!(e.contains("connect failed"), "{e}");
    }
}
