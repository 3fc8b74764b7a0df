//! The data plane: the listener, the handshake in the order of docs/design.md §5, the upstream
//! exchange and the frame relay. Reads only the active [`Snapshot`]; never imports the API
//! types or a Kubernetes client, and never waits on the control plane.
//!
//! Phases of one request, and what an error in each means:
//! 1. route selection by host and path (404);
//! 2. upgrade validation, RFC 6455 §4.2.1 (426, 400);
//! 3. origin policy (403, or 101 then Close 1008 with `rejection: Close`);
//! 4. admission limits (503, 429) and the subprotocol allowlist (403);
//! 5. upstream connect and handshake (502, 504, or the upstream's own answer);
//! 6. relay until either side closes.

pub mod admission;
pub mod client;
mod connection;
mod decide;
pub mod extensions;
pub mod frame;
pub mod handshake;
pub mod http1;
mod listener;
pub mod registry;
pub mod relay;
mod reply;
mod state;
pub mod stream;
pub mod upstream;

pub use listener::{serve, tls_acceptor};
pub use state::{Gateway, ProxyConfig};
