//! The `slotd` command line: parse arguments, call the library, map outcomes to exit
//! status 0 (success), 1 (the server or the config said no), 2 (usage or connection).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use http::Method;
use serde_json::{json, Value};

use slotd::client::{self, segment, AdminClient, ClientError};
use slotd::server::ServeOptions;

#[derive(Parser)]
#[command(
    name = "slotd",
    version,
    about = "A reverse proxy with deployment slots: test, warm up and atomically swap upstream pools"
)]
struct Cli {
    /// Log format of `serve` and `demo`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the main job).
    Serve {
        #[arg(long, default_value = "config/slotd.toml")]
        config: PathBuf,
        /// Take the listening sockets over from a running slotd (zero-downtime upgrade).
        #[arg(long)]
        upgrade: bool,
        /// Detach and run in the background.
        #[arg(long)]
        daemon: bool,
    },
    /// Run the proxy with built-in blue/green upstreams, ready to swap.
    Demo {
        /// Traffic listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin API listener.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
    },
    /// Validate a config file: exit 0, or print every error and exit 1.
    Check {
        #[arg(long, default_value = "config/slotd.toml")]
        config: PathBuf,
    },
    /// Show slots, deployments and instance health.
    Status {
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Put a new deployment into a slot.
    Deploy {
        #[arg(long)]
        app: String,
        #[arg(long)]
        slot: String,
        #[arg(long)]
        version: String,
        /// An upstream instance HOST:PORT; repeat for each instance.
        #[arg(long = "instance", required = true, value_name = "HOST:PORT")]
        instances: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Swap a slot's deployment into another slot (production by default).
    Swap(SwapCommand),
    /// Swap back the last completed swap of an app.
    Rollback {
        #[arg(long)]
        app: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show an app's swaps, newest first.
    History {
        #[arg(long)]
        app: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Testing in production: send a share of new production visitors to a slot
    /// (0 = only visitors who opt in with ?x-slot-routing-name=SLOT).
    Route {
        #[arg(long)]
        app: String,
        #[arg(long)]
        slot: String,
        /// Share of new production visitors, 0-100.
        #[arg(long, required_unless_present = "remove", value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: Option<u8>,
        /// Remove the slot's rule.
        #[arg(long, conflicts_with = "percent")]
        remove: bool,
        /// Unpin every visitor: existing pins are ignored from now on.
        #[arg(long)]
        reset_pins: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-read the config file of the running server (as SIGHUP does).
    Reload {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct SwapCommand {
    #[command(subcommand)]
    action: Option<SwapAction>,
    #[arg(long, required = true)]
    app: Option<String>,
    /// The slot whose deployment goes into the target.
    #[arg(long, required = true)]
    source: Option<String>,
    #[arg(long, default_value = "production")]
    target: String,
    /// Stop after warm-up; routing is unchanged until `swap complete`.
    #[arg(long, conflicts_with = "dry_run")]
    preview: bool,
    /// Show what the swap would do; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum SwapAction {
    /// Switch the swap waiting in preview.
    Complete {
        #[arg(long)]
        app: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel the swap waiting in preview; routing never changed.
    Cancel {
        #[arg(long)]
        app: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// URL of the admin API.
    #[arg(long, env = "SLOTD_ADMIN", default_value = "http://127.0.0.1:9901")]
    admin: String,
    /// File holding the admin token (else the SLOTD_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long, env = "SLOTD_TOKEN", hide = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
    /// Give up when the server has not answered within this long (a swap waits for
    /// its warm-ups).
    #[arg(long, default_value = "15m", value_parser = parse_timeout)]
    timeout: std::time::Duration,
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    slotd::config::parse_duration(s).map_err(|e| format!("{e}; write e.g. \"30s\" or \"15m\""))
}

impl ClientArgs {
    fn client(&self) -> Result<AdminClient, ClientError> {
        let token = match &self.token_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ClientError::Usage(format!("--token-file: cannot read {}: {e}", path.display()))
            })?),
            None => self.token.clone(),
        };
        AdminClient::new(&self.admin, token, self.timeout)
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLOTD_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn,pingora=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            upgrade,
            daemon,
        } => {
            init_logging(cli.log_format);
            let config = match slotd::config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!(
                        "slotd: not started: {} error(s) in the config",
                        errors.len()
                    );
                    return ExitCode::from(1);
                }
            };
            match slotd::server::serve(config, ServeOptions { upgrade, daemon }, None) {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("slotd: not started: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo {
            listen,
            admin_listen,
        } => {
            init_logging(cli.log_format);
            match slotd::demo::run(listen, admin_listen) {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("slotd demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { config } => check(&config),
        other => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("slotd: cannot start a runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(run_client(other)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("slotd: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match slotd::config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", path.display(), errors.len());
            return ExitCode::from(1);
        }
    };
    // A token file that serve could not read is a problem now, not at start-up.
    if let slotd::config::AdminAuth::TokenFile { .. } = &config.admin.auth {
        if let Err(e) = slotd::server::admin_token(&config) {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    }
    let slots: usize = config.apps.iter().map(|a| a.slots.len()).sum();
    println!(
        "{}: ok ({} app(s), {slots} slot(s), proxy on {})",
        path.display(),
        config.apps.len(),
        config
            .proxy
            .listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    ExitCode::SUCCESS
}

/// Prints `value` as JSON or with `table`; a swap record that ended `failed` is exit 1.
fn show(json_out: bool, value: &Value, table: fn(&Value) -> String) -> Result<(), ClientError> {
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print!("{}", table(value));
    }
    if value["state"] == "failed" {
        return Err(ClientError::Refused {
            status: 200,
            message: format!(
                "swap {} failed: {}",
                value["id"].as_str().unwrap_or("?"),
                value["error"].as_str().unwrap_or("see above")
            ),
        });
    }
    Ok(())
}

async fn run_client(command: Command) -> Result<(), ClientError> {
    match command {
        Command::Status { app, client } => {
            let c = client.client()?;
            match app {
                Some(app) => {
                    let v = c
                        .call(Method::GET, &format!("/v1/apps/{}", segment(&app)), None)
                        .await?;
                    show(client.json, &v, client::print_app)
                }
                None => {
                    let v = c.call(Method::GET, "/v1/apps", None).await?;
                    show(client.json, &v, |v| {
                        let apps: Vec<String> = v["apps"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(client::print_app)
                            .collect();
                        if apps.is_empty() {
                            "no apps are configured\n".into()
                        } else {
                            apps.join("\n")
                        }
                    })
                }
            }
        }
        Command::Deploy {
            app,
            slot,
            version,
            instances,
            client,
        } => {
            let c = client.client()?;
            let body = json!({"version": version, "instances": instances});
            let path = format!(
                "/v1/apps/{}/slots/{}/deployment",
                segment(&app),
                segment(&slot)
            );
            let v = c.call(Method::PUT, &path, Some(body)).await?;
            show(client.json, &v, |v| {
                let d = &v["deployment"];
                let mut out = format!(
                    "deployed {} ({}) to slot {}: {}\n",
                    d["version"].as_str().unwrap_or("?"),
                    d["id"].as_str().unwrap_or("?"),
                    v["name"].as_str().unwrap_or("?"),
                    d["instances"]
                        .as_array()
                        .map(|l| l
                            .iter()
                            .filter_map(|i| i["address"].as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                );
                if let Some(t) = v["auto_swap_started"]["target"].as_str() {
                    out.push_str(&format!(
                        "auto-swap into {t} started; follow it with `slotd history`\n"
                    ));
                }
                out
            })
        }
        Command::Swap(swap) => match swap.action {
            Some(SwapAction::Complete { app, client }) => {
                let v = client
                    .client()?
                    .call(
                        Method::POST,
                        &format!("/v1/apps/{}/swap/complete", segment(&app)),
                        None,
                    )
                    .await?;
                show(client.json, &v, client::print_swap)
            }
            Some(SwapAction::Cancel { app, client }) => {
                let v = client
                    .client()?
                    .call(
                        Method::POST,
                        &format!("/v1/apps/{}/swap/cancel", segment(&app)),
                        None,
                    )
                    .await?;
                show(client.json, &v, client::print_swap)
            }
            None => {
                let (Some(app), Some(source)) = (swap.app, swap.source) else {
                    return Err(ClientError::Usage("swap needs --app and --source".into()));
                };
                let body = json!({
                    "source": source,
                    "target": swap.target,
                    "preview": swap.preview,
                    "dry_run": swap.dry_run,
                });
                let v = swap
                    .client
                    .client()?
                    .call(
                        Method::POST,
                        &format!("/v1/apps/{}/swap", segment(&app)),
                        Some(body),
                    )
                    .await?;
                if swap.dry_run {
                    show(swap.client.json, &v, client::print_plan)
                } else {
                    show(swap.client.json, &v, client::print_swap)
                }
            }
        },
        Command::Rollback { app, client } => {
            let v = client
                .client()?
                .call(
                    Method::POST,
                    &format!("/v1/apps/{}/rollback", segment(&app)),
                    None,
                )
                .await?;
            show(client.json, &v, client::print_swap)
        }
        Command::History { app, client } => {
            let v = client
                .client()?
                .call(
                    Method::GET,
                    &format!("/v1/apps/{}/swaps", segment(&app)),
                    None,
                )
                .await?;
            show(client.json, &v, client::print_history)
        }
        Command::Route {
            app,
            slot,
            percent,
            remove,
            reset_pins,
            client,
        } => {
            let c = client.client()?;
            let path = format!("/v1/apps/{}", segment(&app));
            let current = c.call(Method::GET, &path, None).await?;
            let read: Vec<Value> = current["routing"]["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut rules = read.clone();
            rules.retain(|r| r["slot"] != slot.as_str());
            if let (false, Some(p)) = (remove, percent) {
                rules.push(json!({"slot": slot, "percent": p}));
            }
            // Only if nobody changed the rules since they were read (else 409): two
            // `slotd route` at once must not drop each other's rule.
            let body = json!({"rules": rules, "reset_pins": reset_pins, "expected_rules": read});
            let v = c
                .call(Method::PUT, &format!("{path}/routing"), Some(body))
                .await?;
            show(client.json, &v, client::print_routing)
        }
        Command::Reload { client } => {
            let v = client
                .client()?
                .call(Method::POST, "/v1/reload", None)
                .await?;
            show(client.json, &v, client::print_reload)
        }
        Command::Serve { .. } | Command::Demo { .. } | Command::Check { .. } => {
            unreachable!("handled in main")
        }
    }
}
