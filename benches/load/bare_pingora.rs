//! The baseline of the load comparison (`benches/load/compare.sh`): the smallest
//! Pingora HTTP proxy that can stand in for slotd. One fixed upstream peer, built
//! once at start-up; no routing, no header rewriting, no retries, no admin API.
//!
//! Reading the comparison: the distance slotd ↔ bare is the cost of slotd's
//! features (host routing, forwarded headers, sticky headers, the routing-table
//! snapshot per request, metrics); the distance bare ↔ nginx (or haproxy) is the
//! cost of the engine, Pingora itself, which slotd cannot change.
//!
//! ```sh
//! cargo build --release --example bare-pingora
//! target/release/examples/bare-pingora --listen 127.0.0.1:8081 --upstream 127.0.0.1:9001 --threads 1
//! ```
//!
//! The server is configured like `slotd serve` (see `src/server.rs`): `threads`
//! worker threads for the proxy service, 5 s grace period and 5 s graceful shutdown
//! timeout. `SIGINT` stops it at once, `SIGTERM` gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use clap::Parser;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::{http_proxy_service_with_name, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;

/// A minimal Pingora reverse proxy to one fixed upstream: the baseline for slotd.
#[derive(Debug, Parser)]
#[command(name = "bare-pingora")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The single upstream every request goes to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads of the proxy service.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Keep Pingora's default client connection buffers (a 64 KiB read buffer per
    /// connection) instead of slotd's.
    #[arg(long)]
    pingora_buffers: bool,
    /// Folder for Pingora's pid file and upgrade socket (default: the temp folder).
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
}

/// Sends every request to the same peer, built once.
struct Bare {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let args = Args::parse();
    let folder = args.runtime_dir.unwrap_or_else(std::env::temp_dir);
    let pid = std::process::id();
    let conf = ServerConf {
        threads: args.threads.max(1),
        grace_period_seconds: Some(5),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: folder
            .join(format!("bare-pingora-{pid}-upgrade.sock"))
            .display()
            .to_string(),
        pid_file: folder
            .join(format!("bare-pingora-{pid}.pid"))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let bare = Bare {
        peer: HttpPeer::new(args.upstream, false, String::new()),
    };
    let mut proxy = http_proxy_service_with_name(&server.configuration, bare, "bare pingora");
    let buffers = if args.pingora_buffers {
        L4BufferSettings::default()
    } else {
        slotd::server::client_connection_buffers()
    };
    proxy.add_listener(ListenerConfig::tcp(args.listen.to_string()).l4_buffer(buffers));
    server.add_service(proxy);
    eprintln!(
        "bare-pingora: {} -> {} ({} thread(s))",
        args.listen, args.upstream, args.threads
    );
    server.run_forever()
}
