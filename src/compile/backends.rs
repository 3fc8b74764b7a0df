//! What routes may reference, resolved: Services (through their EndpointSlices, or
//! `--service` mappings in standalone mode) and Secrets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::reason;
use crate::memo::digest;
use crate::route::Target;

/// Why a referenced backend cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendProblem {
    /// No such Service (or no standalone mapping for it).
    NotFound,
    /// The Service exists but has no ready endpoint.
    NoReadyEndpoints,
}

/// The backends routes may reference by `service`, resolved to addresses: from
/// `--service` mappings in standalone mode, from Services and EndpointSlices in a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backends {
    /// By namespace, then name (so a lookup copies neither).
    services: HashMap<String, HashMap<String, Ports>>,
    /// Appended to a BackendNotFound message: how to fix it in this mode.
    not_found_hint: String,
    /// By namespace, then name: each Secret's data by key.
    secrets: HashMap<String, HashMap<String, Arc<SecretData>>>,
    /// Appended to a SecretNotFound message: how to fix it in this mode.
    secret_hint: String,
}

/// A Service's ready addresses per service port (`None`: on any port).
type Ports = HashMap<Option<u16>, Vec<Target>>;

/// A Secret's data: bytes by key (`tls.crt`, `tls.key`, `ca.crt`, ...).
pub type SecretData = BTreeMap<String, Vec<u8>>;

impl Backends {
    /// Backends for standalone mode, where a missing one is fixed with `--service`.
    pub fn standalone() -> Backends {
        Backends {
            services: HashMap::new(),
            not_found_hint: "standalone mode resolves services only through `--service NAME.NAMESPACE=HOST:PORT`".to_owned(),
            secrets: HashMap::new(),
            secret_hint: "standalone mode reads Secret NAME from the directory NAME under `--secret-dir`".to_owned(),
        }
    }

    /// Backends in a cluster: each Service port resolved to the ready endpoints of the
    /// Service's EndpointSlices (label `kubernetes.io/service-name`), matched by port name
    /// as kube-proxy does. A Service with no ready endpoint maps to an empty list.
    pub fn from_cluster(services: &[Service], slices: &[EndpointSlice]) -> Backends {
        let mut backends = Backends {
            services: HashMap::new(),
            not_found_hint: "create the Service in the route's namespace, or fix the name or port"
                .to_owned(),
            secrets: HashMap::new(),
            secret_hint: "create the Secret in the route's namespace (a route can only use its own namespace's Secrets)".to_owned(),
        };
        let mut slices_of: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"));
            if let (Some(namespace), Some(service)) = (&slice.metadata.namespace, service) {
                slices_of
                    .entry((namespace.as_str(), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        for svc in services {
            let (Some(namespace), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name)
            else {
                continue;
            };
            let own_slices = slices_of
                .get(&(namespace.as_str(), name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
            for port in ports.into_iter().flatten() {
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let targets = own_slices
                    .iter()
                    .flat_map(|slice| ready_targets(slice, port.name.as_deref()))
                    .collect();
                backends.insert(namespace, name, Some(number), targets);
            }
        }
        backends
    }

    /// Declares the ready addresses of Service `namespace/name` on `port` (`None`: on every
    /// port). An empty list means the Service exists with no ready endpoint.
    pub fn insert(&mut self, namespace: &str, name: &str, port: Option<u16>, targets: Vec<Target>) {
        self.services
            .entry(namespace.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default()
            .insert(port, targets);
    }

    /// Declares Secret `namespace/name` with its data.
    pub fn insert_secret(&mut self, namespace: &str, name: &str, data: SecretData) {
        self.secrets
            .entry(namespace.to_owned())
            .or_default()
            .insert(name.to_owned(), Arc::new(data));
    }

    /// Declares the data of cluster Secrets.
    pub fn insert_cluster_secrets(&mut self, secrets: &[Secret]) {
        for secret in secrets {
            let (Some(namespace), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name)
            else {
                continue;
            };
            let data = secret
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            self.insert_secret(namespace, name, data);
        }
    }

    /// The data of Secret `namespace/name`, or a SecretNotFound message.
    pub(super) fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<&Arc<SecretData>, (&'static str, String)> {
        self.secrets
            .get(namespace)
            .and_then(|n| n.get(name))
            .ok_or_else(|| {
                (
                    reason::SECRET_NOT_FOUND,
                    format!("Secret {namespace}/{name} not found; {}", self.secret_hint),
                )
            })
    }

    /// The ready addresses of Service `namespace/name` on `port`.
    pub(super) fn resolve(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Result<&[Target], BackendProblem> {
        let ports = self
            .services
            .get(namespace)
            .and_then(|n| n.get(name))
            .ok_or(BackendProblem::NotFound)?;
        match ports.get(&Some(port)).or_else(|| ports.get(&None)) {
            None => Err(BackendProblem::NotFound),
            Some(t) if t.is_empty() => Err(BackendProblem::NoReadyEndpoints),
            Some(t) => Ok(t),
        }
    }
}

/// The backends as one route's check reads them. Every lookup is recorded with what it
/// found, so that a later compile can tell whether the check still holds without doing it
/// again ([`still_hold`]).
pub(super) struct Lookups<'b> {
    backends: &'b Backends,
    reads: Vec<Read>,
}

/// One lookup of a route's check, in the route's own namespace, and what it found.
#[derive(Debug)]
pub(super) enum Read {
    /// A Service port, and a digest of its ready addresses (or why there are none).
    Service {
        name: String,
        port: u16,
        found: Result<u64, BackendProblem>,
    },
    /// A Secret, and its data if it exists.
    Secret {
        name: String,
        found: Option<Arc<SecretData>>,
    },
}

impl<'b> Lookups<'b> {
    /// Reads from `backends`, recording nothing yet.
    pub(super) fn new(backends: &'b Backends) -> Lookups<'b> {
        Lookups {
            backends,
            reads: Vec::new(),
        }
    }

    /// [`Backends::resolve`], recorded.
    pub(super) fn resolve(
        &mut self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Result<&'b [Target], BackendProblem> {
        let found = self.backends.resolve(namespace, name, port);
        self.reads.push(Read::Service {
            name: name.to_owned(),
            port,
            found: found.map(|targets| digest(&targets)),
        });
        found
    }

    /// [`Backends::secret`], recorded.
    pub(super) fn secret(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<&'b Arc<SecretData>, (&'static str, String)> {
        let found = self.backends.secret(namespace, name);
        self.reads.push(Read::Secret {
            name: name.to_owned(),
            found: found.as_ref().ok().map(|data| Arc::clone(data)),
        });
        found
    }

    /// The hint for a missing Service in this mode.
    pub(super) fn not_found_hint(&self) -> &'b str {
        &self.backends.not_found_hint
    }

    /// What was read.
    pub(super) fn into_reads(self) -> Vec<Read> {
        self.reads
    }
}

/// Whether every lookup in `reads` (made for a route in `namespace`) finds in `backends`
/// what it found then.
pub(super) fn still_hold(reads: &[Read], backends: &Backends, namespace: &str) -> bool {
    reads.iter().all(|read| match read {
        Read::Service { name, port, found } => {
            backends
                .resolve(namespace, name, *port)
                .map(|targets| digest(&targets))
                == *found
        }
        Read::Secret { name, found } => match (backends.secret(namespace, name), found) {
            (Ok(now), Some(then)) => Arc::ptr_eq(now, then) || now == then,
            (Err(_), None) => true,
            _ => false,
        },
    })
}

/// The ready addresses of one EndpointSlice for the Service port named `port_name`.
fn ready_targets(slice: &EndpointSlice, port_name: Option<&str>) -> Vec<Target> {
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().unwrap_or("") == port_name.unwrap_or(""))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok());
    let Some(port) = port else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        // An endpoint with unknown readiness counts as ready (EndpointSlice API semantics).
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .map(|address| Target {
            host: address.clone(),
            port,
        })
        .collect()
}
