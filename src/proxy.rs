//! The data plane: the listener, the handshake in the order of docs/design.md §5, the upstream
//! exchange and the frame relay. Reads only the active [`Snapshot`](crate::snapshot::Snapshot);
//! never imports the API types or a Kubernetes client, and never waits on the control plane.
//!
//! Phases of one request, and what an error in each means:
//! 1. route selection by host and path (404);
//! 2. upgrade validation, RFC 6455 §4.2.1 (426, 400);
//! 3. origin policy (403, or 101 then Close 1008 with `rejection: Close`);
//! 4. admission limits (503, 429) and the subprotocol allowlist (403);
//! 5. upstream connect and handshake (502, 504, or the upstream's own answer);
//! 6. relay until either side closes.
//!
//! The phases live in their own modules, private to this one, which re-exports what the
//! rest of the crate uses: `state` ([`ProxyConfig`], [`Gateway`] and its connection
//! counts), `listener` ([`serve`], [`tls_acceptor`] and turning connections away at the
//! limit), `connection` (a refusal answered as its connection is accepted, or one
//! connection's task: the handshake driver, then the relay and
//! the accounting of its end), `decide` (steps 1 to 4 from the request head, and the
//! request to forward), `reply` (the answers the client gets, and each handshake's
//! metrics and access-log line) and `http` (a connection whose first request is a plain
//! request on a route with `http`: hyper serves it, each request decided on its own). The public modules are the parts those phases are built
//! from: `handshake` (validation and the rejections), `http1`, `client`, `admission`,
//! `upstream`, `extensions`, `registry`, `relay`, `frame`, `stream` and `tls_server` (TLS
//! from clients).

pub mod admission;
pub mod client;
pub mod extensions;
pub mod frame;
pub mod handshake;
pub mod http1;
pub mod registry;
pub mod relay;
pub mod stream;
pub mod tls_server;
pub mod upstream;

// The phases of one connection; what the rest of the crate uses is re-exported below.
mod connection;
mod decide;
mod h2;
mod http;
mod listener;
mod reply;
mod state;

pub use listener::{serve, tls_acceptor};
pub use state::{Gateway, ProxyConfig};
