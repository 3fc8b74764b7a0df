//! wsgate: a WebSocket gateway that decides which web origins may open a WebSocket to
//! which backend, and enforces it at the edge, before the upgrade.
//!
//! Data flows one way:
//!
//! ```text
//! WebSocketRoute objects ──┐                      ┌─> conditions (status, `wsgate check`)
//! (files or API server)    ├─> compile (pure fn) ─┤
//! Service mappings ────────┘                      └─> RouteTable ─> Snapshot ─(swap)─> proxy
//! ```
//!
//! - [`api`] holds the resource types; [`policy`] the origin rules; [`compile`] turns
//!   resources into a [`route::RouteTable`] and per-route [`compile::Verdict`]s.
//! - [`snapshot`] is what the data plane reads: an immutable table swapped whole.
//! - [`source`] is where resources come from (files in standalone mode).
//! - [`proxy`] is the data plane: listener, handshake policy, upstream, frame relay;
//!   [`tls`] its certificates and upstream verification, [`auth`] its JWT check.
//! - [`admin`] serves health, readiness, metrics and the active snapshot; [`accept`] is the
//!   accept loop step both listeners share.

pub mod accept;
pub mod access;
pub mod admin;
pub mod api;
pub mod apierror;
pub mod auth;
pub mod check;
pub mod compile;
pub mod config;
pub mod controller;
pub mod logging;
mod memo;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod proxy;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod standalone;
pub mod status;
pub mod tls;
