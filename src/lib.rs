//! slotd: a reverse proxy with deployment slots.
//!
//! An operator runs several pools of upstream instances for one app (production,
//! staging, ...). slotd fronts them all, routes each hostname to its slot, warms a
//! new pool up, and swaps it into production atomically with no failed request.
//!
//! # Architecture
//!
//! ```text
//!                control plane                                   data plane
//! config file ─► config::load ─┐
//! admin API ───► swap engine ──┼─► state store ─► RoutingTable::build ─► ArcSwap ◄── proxy
//!                              │   (file)                                  │      (per request)
//!                              └── instance health atomics, shared ◄───────┘
//! ```
//!
//! The two planes meet at exactly one point: an `ArcSwap<RoutingTable>`. The control
//! plane ([`control`], [`swap`]) builds a complete immutable [`routing::RoutingTable`]
//! from (config, state), writes the state durably, then publishes the table with one
//! `store()`. The data plane ([`proxy`]) loads one snapshot per request and never
//! locks, waits on the control plane, or looks anything up that was not precomputed.
//!
//! Modules:
//! - [`config`]: the TOML file → checked [`config::Config`], all errors at once.
//! - [`model`]: apps, slots, deployments, swap records, persisted state.
//! - [`state`]: the [`state::StateStore`] trait and the `file` backend.
//! - [`routing`]: the routing table and instance selection.
//! - [`proxy`]: the Pingora `ProxyHttp` hot path.
//! - [`conn`]: client connections before HTTP: HTTP/2 detection, request-head
//!   deadlines (slowloris), draining on shutdown and upgrade.
//! - [`screen`]: request screening: smuggling shapes and size limits.
//! - [`health`]: active health checks (passive ejection is in [`routing`]).
//! - [`control`]: state + store + table publication; deploys.
//! - [`swap`]: the swap phases, preview, rollback, dry-run plans.
//! - [`warmup`]: direct HTTP warm-up of a pool's instances (and the probe health
//!   checks use).
//! - [`admin`]: the admin HTTP API; [`client`]: the CLI's side of it.
//! - [`metrics`]: metric names and families; [`server`]: process assembly;
//!   [`demo`]: `slotd demo`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod client;
pub mod config;
pub mod conn;
pub mod control;
pub mod demo;
pub mod health;
pub mod metrics;
pub mod model;
pub mod proxy;
pub mod routing;
pub mod screen;
pub mod server;
pub mod state;
pub mod swap;
pub mod warmup;
