//! `slotd serve`: assembles the process.
//!
//! Order matters: everything that can fail on bad input (config, token, state file,
//! listen addresses) is checked before the Pingora server starts, so a bad start
//! exits with one clear message and binds nothing it keeps. Then the Pingora server
//! runs the proxy service on the traffic listeners and the admin API as a background
//! service on the admin listener, and owns the process until shutdown.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::sync::broadcast;

use crate::admin::{self, AdminState};
use crate::config::{AdminAuth, Config, StateConfig};
use crate::conn::ClientConnections;
use crate::control::{ControlPlane, StartError};
use crate::health::HealthChecker;
use crate::metrics::Metrics;
use crate::proxy::SlotProxy;
use crate::state;

/// Why `serve` did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Token(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{file}: {key}: cannot listen on {addr}: {reason} ({hint})")]
    Listen {
        file: String,
        key: &'static str,
        addr: SocketAddr,
        reason: String,
        hint: &'static str,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(String),
}

/// Command-line switches of `serve` that go to Pingora.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Take the listening sockets over from a running slotd (zero-downtime upgrade).
    pub upgrade: bool,
    pub daemon: bool,
}

fn listen_error(
    config: &Config,
    key: &'static str,
    addr: SocketAddr,
    e: std::io::Error,
) -> ServeError {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another process listens there: stop it or choose another address"
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need root or CAP_NET_BIND_SERVICE"
        }
        std::io::ErrorKind::AddrNotAvailable => "that IP address is not on this machine",
        _ => "check the address",
    };
    ServeError::Listen {
        file: config.file.display().to_string(),
        key,
        addr,
        reason: e.to_string(),
        hint,
    }
}

/// Reads the admin token the config names. `None` when auth is off.
pub fn admin_token(config: &Config) -> Result<Option<String>, String> {
    let file = config.file.display();
    let (token, line, key) = match &config.admin.auth {
        AdminAuth::None => return Ok(None),
        AdminAuth::TokenFile { path, line } => {
            let token = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "{file}:{line}: admin.token_file: cannot read {}: {e} (create it with a long random token, e.g. `openssl rand -hex 32 > {}`)",
                    path.display(),
                    path.display()
                )
            })?;
            (token, line, "admin.token_file")
        }
        AdminAuth::TokenEnv { var, line } => {
            let token = std::env::var(var).map_err(|_| {
                format!(
                    "{file}:{line}: admin.token_env: the environment variable {var} is not set (export {var}=<a long random token>)"
                )
            })?;
            (token, line, "admin.token_env")
        }
    };
    let token = token.trim().to_string();
    if token.len() < 8 {
        return Err(format!(
            "{file}:{line}: {key}: the admin token is {} characters long; use at least 8, better 32 random hex characters",
            token.len()
        ));
    }
    Ok(Some(token))
}

/// Where the runtime files of this server go (upgrade socket, pid file): next to the
/// state file.
fn runtime_folder(config: &Config) -> PathBuf {
    match &config.state {
        StateConfig::File { path } => match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Runs the proxy and the admin API until the process is told to stop.
/// Returns only on a start-up error.
pub fn serve(
    mut config: Config,
    options: ServeOptions,
    on_ready: Option<Box<dyn FnOnce() + Send>>,
) -> Result<std::convert::Infallible, ServeError> {
    let token = admin_token(&config).map_err(ServeError::Token)?;
    // A daemon changes its working folder: pin the state file down first, and the
    // config file, which a reload reads again.
    let StateConfig::File { path } = &mut config.state;
    *path = absolute(path);
    config.file = absolute(&config.file);
    let metrics = Arc::new(Metrics::new());

    // The control plane starts on a short-lived runtime: it only reads the store and
    // builds the first table. Afterwards it is driven from the admin runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Runtime(e.to_string()))?;
    let store = state::open(&config);
    let cp = rt.block_on(ControlPlane::start(
        config.clone(),
        store,
        metrics,
        !options.upgrade,
    ))?;
    drop(rt);

    // In a zero-downtime upgrade the previous process still holds the admin address
    // (and may still change state); the admin API binds once it lets go, then reloads
    // the state it left.
    let admin_listener = if options.upgrade {
        None
    } else {
        let l = TcpListener::bind(config.admin.listen)
            .map_err(|e| listen_error(&config, "admin.listen", config.admin.listen, e))?;
        l.set_nonblocking(true)
            .map_err(|e| listen_error(&config, "admin.listen", config.admin.listen, e))?;
        // Pingora reports a failed bind only by exiting; check first for a clear error.
        for addr in &config.proxy.listen {
            TcpListener::bind(addr).map_err(|e| listen_error(&config, "proxy.listen", *addr, e))?;
        }
        Some(l)
    };

    let folder = absolute(&runtime_folder(&config));
    let _ = std::fs::create_dir_all(&folder);
    let mut conf = ServerConf {
        threads: config.proxy.threads,
        grace_period_seconds: Some(config.proxy.shutdown_grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: folder.join("slotd-upgrade.sock").display().to_string(),
        pid_file: folder.join("slotd.pid").display().to_string(),
        ..ServerConf::default()
    };
    conf.daemon = options.daemon;
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let client = config.proxy.client;
    let proxy_app = |h2c: bool| {
        let mut app =
            pingora::proxy::http_proxy(&server.configuration, SlotProxy::new(cp.routing()));
        let mut options = HttpServerOptions::default();
        options.h2c = h2c;
        options.h2_idle_timeout = Some(client.keepalive_timeout);
        app.server_options = Some(options);
        Arc::new(app)
    };
    let connections = ClientConnections {
        h1: proxy_app(false),
        h2c: proxy_app(true),
        routing: cp.routing(),
    };
    let mut proxy = Service::new("slotd proxy".to_string(), connections);
    for addr in &config.proxy.listen {
        proxy.add_listener(
            ListenerConfig::tcp(addr.to_string()).l4_buffer(client_connection_buffers()),
        );
    }
    server.add_service(proxy);

    let admin = AdminService {
        listener: Mutex::new(admin_listener),
        address: config.admin.listen,
        cp: cp.clone(),
        router: admin::router(AdminState {
            cp: cp.clone(),
            token: token.map(Arc::from),
        }),
        on_ready: Mutex::new(on_ready),
    };
    let mut admin = background_service("admin API", admin);
    admin.threads = Some(1);
    server.add_service(admin);

    let lifecycle = Lifecycle {
        phases: Mutex::new(Some(server.watch_execution_phase())),
        cp: cp.clone(),
    };
    server.add_service(background_service("lifecycle", lifecycle));

    let mut health = background_service("health checks", HealthChecker::new(cp.clone()));
    health.threads = Some(1);
    server.add_service(health);

    tracing::info!(
        proxy = ?config.proxy.listen,
        admin = %config.admin.listen,
        state = %cp.describe_store(),
        apps = config.apps.len(),
        "slotd serving"
    );
    server.run_forever()
}

/// Buffers of each client connection. Pingora's default puts a 64 KiB read buffer
/// in front of every accepted socket, which an idle keep-alive connection keeps
/// (about 52 KiB of RSS each, 0.5 GiB at 10,000 connections). The HTTP layer reads
/// headers and bodies into buffers of its own, so reads go straight to the socket
/// instead; writes keep Pingora's one-segment buffer.
pub fn client_connection_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}

/// Follows the server's execution phases: once it starts shutting down or handing
/// its listeners to a new process, responses close their connections
/// ([`crate::conn::start_draining`]), so clients reconnect (to the new process, in
/// an upgrade) instead of sending their next request on a connection about to close.
/// Also reloads the config file on SIGHUP.
struct Lifecycle {
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    cp: Arc<ControlPlane>,
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: reload with POST /v1/reload");
                None
            }
        };
        loop {
            let phase = tokio::select! {
                phase = phases.recv() => phase,
                Some(()) = async { hangups.as_mut()?.recv().await } => {
                    tracing::info!("SIGHUP: reloading the config file");
                    // The outcome is logged and counted by reload itself.
                    let _ = self.cp.reload().await;
                    continue;
                }
            };
            match phase {
                Ok(
                    ExecutionPhase::GracefulUpgradeTransferringFds
                    | ExecutionPhase::GracefulTerminate
                    | ExecutionPhase::ShutdownStarted,
                ) => crate::conn::start_draining(),
                Ok(ExecutionPhase::Terminated) | Err(broadcast::error::RecvError::Closed) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            }
        }
    }
}

/// The admin API as a Pingora background service.
struct AdminService {
    /// Bound before start-up; `None` in an upgrade, where `address` is bound later.
    listener: Mutex<Option<TcpListener>>,
    address: SocketAddr,
    cp: Arc<ControlPlane>,
    router: axum::Router,
    on_ready: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl AdminService {
    /// Binds the admin address once the previous process has released it.
    async fn bind_when_free(
        &self,
        shutdown: &mut ShutdownWatch,
    ) -> Option<tokio::net::TcpListener> {
        let mut logged = false;
        loop {
            match tokio::net::TcpListener::bind(self.address).await {
                Ok(l) => return Some(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    if !logged {
                        tracing::info!(admin = %self.address, "waiting for the previous slotd to release the admin address");
                        logged = true;
                    }
                }
                Err(e) => {
                    tracing::error!(admin = %self.address, error = %e, "admin API cannot listen");
                    return None;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                _ = shutdown.changed() => return None,
            }
        }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let bound = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let listener = match bound {
            Some(l) => tokio::net::TcpListener::from_std(l),
            None => {
                let Some(l) = self.bind_when_free(&mut shutdown).await else {
                    return;
                };
                if let Err(e) = self.cp.reload_state(true).await {
                    tracing::error!(error = %e, "cannot reload the state the previous process left; serving the state read at start-up");
                }
                Ok(l)
            }
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin API cannot use its listener");
                return;
            }
        };
        if let Some(ready) = self
            .on_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            ready();
        }
        serve_admin(listener, self.router.clone(), shutdown, &self.cp).await;
    }
}

/// Most admin connections served at once; more are closed at once.
const ADMIN_MAX_CONNECTIONS: usize = 256;
/// A request head must arrive within this (also bounds idle keep-alive).
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest admin request head.
const ADMIN_MAX_HEAD: usize = 16 * 1024;

/// Serves the admin router over HTTP/1.1 until shutdown, with a header read timeout,
/// a head size limit and a cap on connections (the body limits and timeout are in the
/// router, see [`admin::BODY_TIMEOUT`]).
async fn serve_admin(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut shutdown: ShutdownWatch,
    cp: &ControlPlane,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "admin API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => {
                // Sealed before the admin address is let go: a process taking over
                // binds it, then reads the state, which nothing here writes again.
                cp.seal().await;
                return;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = ADMIN_MAX_CONNECTIONS, "admin API at its connection limit: closing a new connection");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .max_buf_size(ADMIN_MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
            drop(slot);
        });
    }
}
