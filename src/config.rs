//! Command-line flags and their environment-variable twins, parsed once into typed values.
//! The only place that reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use ipnet::IpNet;

use crate::admin::AdminConfig;
use crate::proxy::ProxyConfig;
use crate::proxy::client::TrustedProxies;
use crate::proxy::upstream::UpstreamTimeouts;
use crate::route::Target;
use crate::server::Shutdown;
use crate::source::local::ServiceMapping;

/// wsgate: a WebSocket gateway that enforces which web origins may connect to which backend.
#[derive(Debug, Parser)]
#[command(name = "wsgate", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `wsgate=debug`.
    #[arg(long, env = "WSGATE_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log line format: `text`, or `json` (one object per line, for log pipelines).
    #[arg(long, env = "WSGATE_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands (docs/design.md §2).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve routes from YAML files, with no cluster; reload when they change.
    Standalone(StandaloneArgs),
    /// Watch WebSocketRoutes in a cluster (KUBECONFIG or in-cluster), serve them, write
    /// their status.
    Controller(ControllerArgs),
    /// Validate route files offline and print each route's conditions.
    Check(CheckArgs),
    /// Print the WebSocketRoute CustomResourceDefinition.
    Crd,
    /// Check that a running gateway answers: admin `/readyz` is 200, and the proxy answers
    /// a handshake for an unrouted host with its 404 (what `helm test` runs).
    Probe(ProbeArgs),
    /// Scale the gateway's Deployment to 0 and wait until its pods are gone, so that the
    /// last replica marks every route GatewayStopped (the chart's pre-delete hook).
    ScaleToZero(ScaleToZeroArgs),
}

/// Flags of `wsgate scale-to-zero`.
#[derive(Debug, Args)]
pub struct ScaleToZeroArgs {
    /// The Deployment running the replicas.
    #[arg(long, env = "WSGATE_DEPLOYMENT")]
    pub deployment: String,
    /// Its namespace (default: the client's: the pod's in a cluster, the kubeconfig
    /// context's otherwise).
    #[arg(long, env = "WSGATE_DEPLOYMENT_NAMESPACE")]
    pub namespace: Option<String>,
    /// Seconds to wait for the pods to be gone (they drain first).
    #[arg(long, env = "WSGATE_SCALE_TIMEOUT", default_value = "120", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// Flags of `wsgate probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The admin listener, `host:port`.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// The proxy listener, `host:port`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub proxy: String,
}

/// Flags of `wsgate standalone`.
#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// A WebSocketRoute YAML file, or a directory of `*.yaml`/`*.yml` files.
    #[arg(long, env = "WSGATE_ROUTES")]
    pub routes: PathBuf,
    /// Resolve a `service` upstream: `NAME.NAMESPACE=HOST:PORT` (repeatable; any port of
    /// the service maps to HOST:PORT; the same service again adds an endpoint). In the
    /// environment, separate entries with commas.
    #[arg(long = "service", env = "WSGATE_SERVICES", value_delimiter = ',', value_parser = parse_service)]
    pub services: Vec<ServiceMapping>,
    /// Secrets for routes' `tls.secretName` and `upstream.tls.caSecretName`: Secret NAME is
    /// the directory NAME here, one file per key (`tls.crt`, `tls.key`, `ca.crt`), as a
    /// mounted Secret volume is laid out. Watched: changes apply at once.
    #[arg(long, env = "WSGATE_SECRET_DIR")]
    pub secret_dir: Option<PathBuf>,
    /// Listener options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of `wsgate controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Watch only these namespaces (repeatable, or comma-separated; default: all
    /// namespaces). Each kind is then watched once per namespace.
    #[arg(long = "namespace", env = "WSGATE_NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Name of the Lease whose holder writes route status and Events.
    #[arg(long, env = "WSGATE_LEASE_NAME", default_value = "wsgate")]
    pub lease_name: String,
    /// Namespace of that Lease (default: the client's namespace: the pod's in a cluster,
    /// the kubeconfig context's otherwise).
    #[arg(long, env = "WSGATE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds a Lease holder's claim lasts unrenewed: how long status waits after a
    /// leader dies before another replica writes it (minimum 3).
    #[arg(long, env = "WSGATE_LEASE_DURATION", default_value = "15", value_parser = parse_seconds)]
    pub lease_duration: Duration,
    /// This replica's name as Lease holder and Event reporter (default: host name and
    /// process id; set it to the pod name).
    #[arg(long, env = "WSGATE_IDENTITY")]
    pub identity: Option<String>,
    /// The Deployment running these replicas, in the Lease's namespace. On SIGTERM the
    /// Lease holder reads it: when it is gone, being deleted or scaled to 0, no replica
    /// remains, so the holder marks every route it reports on not Ready (`GatewayStopped`),
    /// releases the Lease and never recreates it. Unset: it only releases the Lease.
    #[arg(long, env = "WSGATE_DEPLOYMENT")]
    pub deployment: Option<String>,
    /// Listener options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl ControllerArgs {
    /// `--identity`, or the host name and process id.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "wsgate".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Flags of every command that serves traffic.
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Plain WebSocket listener address.
    #[arg(long, env = "WSGATE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// TLS (`wss://`) listener address, for routes with `tls`; the certificate is chosen by
    /// SNI, and a name no route has a certificate for fails the TLS handshake.
    #[arg(long, env = "WSGATE_LISTEN_TLS", default_value = "0.0.0.0:8443")]
    pub listen_tls: SocketAddr,
    /// Admin listener address (`/healthz`, `/readyz`, `/metrics`, `/routes`).
    #[arg(long, env = "WSGATE_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// A host name the admin endpoints answer to besides IP addresses, `localhost` and
    /// in-cluster Service names (repeatable; comma-separated in the environment). Requests
    /// for any other `Host` get 421, so a page cannot read them through DNS rebinding.
    #[arg(long = "admin-host", env = "WSGATE_ADMIN_HOST", value_delimiter = ',', value_parser = parse_admin_host)]
    pub admin_hosts: Vec<String>,
    /// Most admin connections open at once; one beyond is closed at once, so idle admin
    /// sockets cannot use up the descriptors the proxy needs.
    #[arg(long, env = "WSGATE_ADMIN_MAX_CONNECTIONS", default_value = "64", value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_max_connections: u32,
    /// Seconds an admin client may take to send its request head (and an idle keep-alive
    /// admin connection stays open).
    #[arg(long, env = "WSGATE_ADMIN_HEAD_TIMEOUT", default_value = "5", value_parser = parse_seconds)]
    pub admin_head_timeout: Duration,
    /// Seconds an admin connection may make no progress reading or writing.
    #[arg(long, env = "WSGATE_ADMIN_IDLE_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub admin_idle_timeout: Duration,
    /// Seconds between SIGTERM (readyz turns 503) and closing the listener, so load
    /// balancers notice.
    #[arg(long, env = "WSGATE_SHUTDOWN_DELAY", default_value = "2", value_parser = parse_seconds)]
    pub shutdown_delay: Duration,
    /// Seconds to wait for connections to close after sending them Close 1012.
    #[arg(long, env = "WSGATE_SHUTDOWN_GRACE", default_value = "30", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,
    /// Seconds over which a shutdown spreads its Close 1012 frames, in random order, so that
    /// the clients of a replica do not all reconnect at once; 0 closes all at once. Must be
    /// shorter than --shutdown-grace.
    #[arg(long, env = "WSGATE_SHUTDOWN_JITTER", default_value = "0", value_parser = parse_seconds)]
    pub shutdown_jitter: Duration,
    /// Seconds to wait for a TCP connection to an upstream.
    #[arg(long, env = "WSGATE_UPSTREAM_CONNECT_TIMEOUT", default_value = "5", value_parser = parse_seconds)]
    pub upstream_connect_timeout: Duration,
    /// Seconds to wait for an upstream's handshake response once connected.
    #[arg(long, env = "WSGATE_UPSTREAM_RESPONSE_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub upstream_response_timeout: Duration,
    /// Seconds a client may take to send its request head.
    #[arg(long, env = "WSGATE_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub handshake_timeout: Duration,
    /// Seconds a response to a plain HTTP request (routes with `http`) may wait for the
    /// client to read it; a client that reads nothing for this long is disconnected, as
    /// nginx's `send_timeout`.
    #[arg(long, env = "WSGATE_HTTP_SEND_TIMEOUT", default_value = "60", value_parser = parse_seconds)]
    pub http_send_timeout: Duration,
    /// Most client connections open at once, handshaking or relayed; a connection beyond it
    /// gets 503 with `Retry-After: 1`.
    #[arg(long, env = "WSGATE_MAX_CONNECTIONS", default_value = "100000", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Address ranges (CIDR, e.g. `10.0.0.0/8`; repeatable or comma-separated) of proxies in
    /// front of the gateway whose `X-Forwarded-For` names the client. From any other peer the
    /// header is not believed.
    #[arg(long = "trusted-proxies", env = "WSGATE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<IpNet>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a load balancer,
    /// whose source address is the client. A connection without one is closed.
    #[arg(long, env = "WSGATE_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
}

impl ServeArgs {
    /// The data-plane tunables these flags describe.
    pub fn proxy_config(&self) -> ProxyConfig {
        ProxyConfig {
            upstream: UpstreamTimeouts {
                connect: self.upstream_connect_timeout,
                response: self.upstream_response_timeout,
            },
            header_read_timeout: self.handshake_timeout,
            max_connections: self.max_connections as usize,
            trusted_proxies: TrustedProxies::new(self.trusted_proxies.clone()),
            proxy_protocol: self.proxy_protocol,
            http_send_timeout: self.http_send_timeout,
            ..ProxyConfig::default()
        }
    }

    /// The shutdown these flags describe. The jitter must end before the grace does, or the
    /// last connections to be told would be cut before they could answer.
    pub fn shutdown(&self) -> Result<Shutdown, ShutdownFlagsError> {
        if !self.shutdown_jitter.is_zero() && self.shutdown_jitter >= self.shutdown_grace {
            return Err(ShutdownFlagsError {
                jitter: self.shutdown_jitter,
                grace: self.shutdown_grace,
            });
        }
        Ok(Shutdown {
            delay: self.shutdown_delay,
            grace: self.shutdown_grace,
            jitter: self.shutdown_jitter,
        })
    }

    /// The admin listener's limits these flags describe.
    pub fn admin_config(&self) -> AdminConfig {
        AdminConfig {
            hosts: self.admin_hosts.clone(),
            max_connections: self.admin_max_connections as usize,
            head_timeout: self.admin_head_timeout,
            idle_timeout: self.admin_idle_timeout,
        }
    }
}

/// Flags of `wsgate check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Route files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

fn parse_service(s: &str) -> Result<ServiceMapping, String> {
    let hint = "write NAME.NAMESPACE=HOST:PORT, e.g. chat-backend.apps=127.0.0.1:9000";
    let (svc, addr) = s.split_once('=').ok_or_else(|| format!("`{s}`: {hint}"))?;
    let (name, namespace) = svc
        .split_once('.')
        .filter(|(n, ns)| !n.is_empty() && !ns.is_empty())
        .ok_or_else(|| format!("`{svc}` needs a namespace: {hint}"))?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("`{addr}` needs a port: {hint}"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{port}` is not a port in 1..65535: {hint}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{addr}` has no host: {hint}"));
    }
    Ok(ServiceMapping {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        target: Target {
            host: host.to_owned(),
            port,
        },
    })
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not an address range: write a CIDR such as 10.0.0.0/8 or fd00::/8, or one address"))
}

fn parse_admin_host(s: &str) -> Result<String, String> {
    let name = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.contains([':', '/', ' ']) {
        return Err(format!(
            "`{s}` is not a host name: write the name alone, e.g. wsgate-admin.example.com"
        ));
    }
    Ok(name)
}

/// `--shutdown-jitter` does not end before `--shutdown-grace`.
#[derive(Debug, thiserror::Error)]
#[error(
    "--shutdown-jitter ({}s) must be shorter than --shutdown-grace ({}s): the connections told last need time to close; lower the jitter or raise the grace, e.g. --shutdown-jitter 10 --shutdown-grace 30",
    .jitter.as_secs_f64(),
    .grace.as_secs_f64()
)]
pub struct ShutdownFlagsError {
    jitter: Duration,
    grace: Duration,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("`{s}` is not a number of seconds, e.g. 2 or 0.5"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_mapping_parses_name_namespace_host_and_port() {
        let m = parse_service("chat.apps=127.0.0.1:9000").expect("parses");
        assert_eq!((m.name.as_str(), m.namespace.as_str()), ("chat", "apps"));
        assert_eq!(m.target.to_string(), "127.0.0.1:9000");
        let v6 = parse_service("chat.apps=[::1]:9000").expect("parses");
        assert_eq!(v6.target.host, "::1");
    }

    #[test]
    fn bad_service_mappings_say_what_to_write() {
        for bad in [
            "chat",
            "chat=1.2.3.4:5",
            "chat.apps=1.2.3.4",
            "chat.apps=1.2.3.4:0",
        ] {
            let err = parse_service(bad).expect_err(bad);
            assert!(err.contains("NAME.NAMESPACE=HOST:PORT"), "{err}");
        }
    }

    #[test]
    fn trusted_proxies_are_ranges_or_single_addresses() {
        assert_eq!(
            parse_cidr("10.0.0.0/8").expect("cidr").to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_cidr(" 192.0.2.1 ").expect("addr").to_string(),
            "192.0.2.1/32"
        );
        let err = parse_cidr("10.0.0.0/33").expect_err("bad prefix");
        assert!(err.contains("CIDR"), "{err}");
    }

    #[test]
    fn admin_hosts_are_lower_case_names_without_port_or_trailing_dot() {
        assert_eq!(
            parse_admin_host("Admin.Example.com.").as_deref(),
            Ok("admin.example.com")
        );
        assert!(parse_admin_host("admin.example.com:9090").is_err());
        assert!(parse_admin_host("").is_err());
    }

    #[test]
    fn seconds_accept_fractions_and_refuse_words() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("soon").is_err());
        assert!(parse_seconds("-1").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
