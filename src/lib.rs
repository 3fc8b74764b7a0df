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
//!   resources into a [`route::RouteTable`] and per-route [`compile::Verdict`]s, with
//!   [`route::path`] for the paths routes match; [`status`] turns verdicts into conditions.
//! - [`snapshot`] is what the data plane reads: an immutable table swapped whole.
//! - [`source`] is where resources come from: files ([`source::file`]) or the API server
//!   ([`source::kube`]); [`standalone`] and [`controller`] wire each mode, and the
//!   controller's Lease holder writes status and Events ([`controller::report`]).
//! - [`proxy`] is the data plane: listener, handshake policy, upstream, frame relay;
//!   [`tls`] its certificates and upstream verification, [`auth`] its JWT check, [`access`]
//!   its access log.
//! - [`admin`] serves health, readiness, metrics and the active snapshot; [`server`] starts
//!   and drains the listeners, which share the accept step in [`accept`].
//! - Around them: [`config`] (flags), [`metrics`], [`logging`] (what the log leaves out),
//!   [`apierror`] (Kubernetes errors in one line), [`check`], [`probe`] and
//!   [`scale_to_zero`] (the commands that do not serve).
//!
//! The design they follow, and the layering, is in `docs/design.md`.

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
pub mod request;
pub mod route;
pub mod scale_to_zero;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod standalone;
pub mod status;
pub mod tls;
