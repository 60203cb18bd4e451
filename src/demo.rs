//! `slotd demo`: the proxy plus two built-in upstream pools, ready to swap.
//!
//! Blue (v1, two instances) starts in `production`, green (v2, two instances) in
//! `staging`. Each instance answers every request with its colour, version, name, the
//! Host it was asked for and the `X-Slot` sticky header it received, so a swap and the
//! stickiness of slot headers are visible with curl. The config is `config/demo.toml`
//! (compiled in); the instances listen on free loopback ports chosen at start and the
//! state lives in a fresh temporary folder, so every demo starts blue-in-production.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::config::{self, Config, InitialDeployment, StateConfig};
use crate::server::{self, ServeError, ServeOptions};

pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the built-in demo config is invalid:\n{0}")]
    Config(config::ConfigErrors),
    #[error("cannot start the demo upstreams: {0}")]
    Upstreams(String),
    #[error("--admin-listen {0}: the demo's admin API has no token, so it listens on loopback only (use 127.0.0.1:PORT, or run `slotd serve` with a token)")]
    AdminNotLoopback(SocketAddr),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// One demo instance: what it says about itself.
#[derive(Clone)]
struct Identity {
    colour: &'static str,
    version: &'static str,
    name: String,
}

async fn answer(id: Identity, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let body = format!(
        "{} {} from {}: Host={} X-Slot={} path={}\n",
        id.colour,
        id.version,
        id.name,
        header("host"),
        header("x-slot"),
        req.uri().path()
    );
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-instance", id.name.as_str())
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid"))
}

/// Starts the demo instances on a thread of their own; returns their addresses.
fn start_upstreams(ids: Vec<Identity>) -> Result<Vec<SocketAddr>, DemoError> {
    let mut listeners = Vec::new();
    for _ in &ids {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| DemoError::Upstreams(e.to_string()))?;
        l.set_nonblocking(true)
            .map_err(|e| DemoError::Upstreams(e.to_string()))?;
        listeners.push(l);
    }
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DemoError::Upstreams(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| DemoError::Upstreams(e.to_string()))?;
    std::thread::Builder::new()
        .name("demo-upstreams".into())
        .spawn(move || {
            rt.block_on(async move {
                for (listener, id) in listeners.into_iter().zip(ids) {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "demo upstream cannot listen");
                            continue;
                        }
                    };
                    tokio::spawn(async move {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else {
                                continue;
                            };
                            let id = id.clone();
                            tokio::spawn(async move {
                                let svc = service_fn(move |req| answer(id.clone(), req));
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    });
                }
                std::future::pending::<()>().await;
            });
        })
        .map_err(|e| DemoError::Upstreams(e.to_string()))?;
    Ok(addrs)
}

/// The demo config with the real instance addresses, listeners and a fresh state.
fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    blue: Vec<String>,
    green: Vec<String>,
) -> Result<Config, DemoError> {
    let mut config =
        config::parse(Path::new("config/demo.toml"), DEMO_CONFIG).map_err(DemoError::Config)?;
    config.proxy.listen = vec![listen];
    config.admin.listen = admin;
    // A folder no earlier demo used (a container often runs every demo as the same
    // pid), so every demo starts from the config.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let folder = std::env::temp_dir().join(format!("slotd-demo-{}-{nanos}", std::process::id()));
    config.state = StateConfig::File {
        path: folder.join("state.json"),
    };
    for app in &mut config.apps {
        for slot in &mut app.slots {
            let (instances, version) = match slot.name.as_str() {
                "production" => (blue.clone(), "v1"),
                "staging" => (green.clone(), "v2"),
                _ => continue,
            };
            slot.initial = Some(InitialDeployment {
                version: version.into(),
                instances,
            });
        }
    }
    Ok(config)
}

/// Runs the demo until interrupted.
pub fn run(listen: SocketAddr, admin: SocketAddr) -> Result<Infallible, DemoError> {
    if !admin.ip().is_loopback() {
        return Err(DemoError::AdminNotLoopback(admin));
    }
    let ids = vec![
        Identity {
            colour: "blue",
            version: "v1",
            name: "blue-1".into(),
        },
        Identity {
            colour: "blue",
            version: "v1",
            name: "blue-2".into(),
        },
        Identity {
            colour: "green",
            version: "v2",
            name: "green-1".into(),
        },
        Identity {
            colour: "green",
            version: "v2",
            name: "green-2".into(),
        },
    ];
    let addrs: Vec<String> = start_upstreams(ids)?
        .iter()
        .map(|a| a.to_string())
        .collect();
    let config = demo_config(listen, admin, addrs[..2].to_vec(), addrs[2..].to_vec())?;
    let port = listen.port();
    let admin_flag = if admin == SocketAddr::from(([127, 0, 0, 1], 9901)) {
        String::new()
    } else {
        format!(" --admin http://{admin}")
    };
    let intro = format!(
        "\nslotd demo is running: app `shop`, blue v1 in production, green v2 in staging.\n\
         \n  curl http://localhost:{port}/                 # production: blue v1\
         \n  curl http://staging.localhost:{port}/         # staging: green v2\
         \n  slotd status{admin_flag} --app shop\
         \n  slotd swap{admin_flag} --app shop --source staging        # warm green, swap it into production\
         \n  curl http://localhost:{port}/                 # production: green v2, X-Slot=production\
         \n  slotd rollback{admin_flag} --app shop                      # blue is back\
         \n  slotd history{admin_flag} --app shop\
         \n\n(from a checkout, `slotd` is `cargo run --release --`; stop the demo with Ctrl-C)\n"
    );
    let on_ready: Box<dyn FnOnce() + Send> = Box::new(move || println!("{intro}"));
    Ok(server::serve(
        config,
        ServeOptions::default(),
        Some(on_ready),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_is_valid_and_gets_the_real_instances() {
        let c = demo_config(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            vec!["127.0.0.1:3".into()],
            vec!["127.0.0.1:4".into()],
        )
        .expect("valid");
        let app = &c.apps[0];
        assert_eq!(
            app.slot("production")
                .unwrap()
                .initial
                .as_ref()
                .unwrap()
                .instances,
            vec!["127.0.0.1:3"]
        );
        assert_eq!(
            app.slot("staging")
                .unwrap()
                .initial
                .as_ref()
                .unwrap()
                .version,
            "v2"
        );
    }
}
