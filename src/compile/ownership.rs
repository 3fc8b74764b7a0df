//! Which namespace each hostname belongs to. Routes are not trusted across namespaces: a
//! hostname belongs to the namespace of its oldest served route, and a route from another
//! namespace may serve it (or a hostname under a wildcard it owns) only with a grant from a
//! route of the owner on it (`hostnameGrants`), in the spirit of Gateway API's
//! `allowedRoutes` and `ReferenceGrant`. Without this, a newer route in another namespace
//! could take over a path (`Exact /ws` beats `PathPrefix /ws`) of a hostname it does not own.

use std::fmt;
use std::sync::Arc;

use crate::route::RouteKey;

/// A hostname as a table key: `(wildcard, name)`, with `*.` stripped from wildcards, so
/// the wildcards covering a hostname are found by its suffixes without allocating.
type HostKey<'a> = (bool, &'a str);

fn host_key(hostname: &str) -> HostKey<'_> {
    match hostname.strip_prefix("*.") {
        Some(suffix) => (true, suffix),
        None => (false, hostname),
    }
}

/// The hostname owners found so far (compile visits routes oldest first) and every grant.
pub(super) struct Owners<'a> {
    owners: foldhash::HashMap<HostKey<'a>, (&'a str, &'a RouteKey)>,
    /// (hostname, granting namespace, granted namespace).
    grants: foldhash::HashSet<(HostKey<'a>, &'a str, &'a str)>,
}

/// A route's hostname that another namespace owns and has not granted to it.
pub(super) struct Trespass<'a> {
    hostname: &'a str,
    /// The owned hostname: `hostname` itself, or a wildcard covering it.
    owned: HostKey<'a>,
    namespace: &'a str,
    owner: &'a RouteKey,
    /// The trespassing route's namespace.
    guest: &'a str,
}

impl<'a> Owners<'a> {
    /// Room for the hostnames of `routes` routes, most of which have one.
    pub(super) fn with_capacity(routes: usize) -> Owners<'a> {
        Owners {
            owners: foldhash::HashMap::with_capacity_and_hasher(routes, Default::default()),
            grants: foldhash::HashSet::default(),
        }
    }

    /// Records that routes in `namespace` on `hostnames` let `granted` namespaces serve them.
    /// A grant counts only where `namespace` turns out to own the hostname.
    pub(super) fn grant(
        &mut self,
        namespace: &'a str,
        hostnames: &'a [Arc<str>],
        granted: impl Iterator<Item = &'a str> + Clone,
    ) {
        for hostname in hostnames {
            for guest in granted.clone() {
                self.grants.insert((host_key(hostname), namespace, guest));
            }
        }
    }

    /// The first of `hostnames` that another namespace owns, itself or by a wildcard that
    /// covers it, without a grant to `namespace`.
    pub(super) fn trespass(
        &self,
        namespace: &'a str,
        hostnames: &'a [Arc<str>],
    ) -> Option<Trespass<'a>> {
        hostnames.iter().find_map(|hostname| {
            let hostname: &'a str = hostname;
            let (wildcard, name) = host_key(hostname);
            // The hostname's own key, then the wildcard of every proper suffix.
            let covering = std::iter::successors(Some(name), |rest| {
                rest.split_once('.').map(|(_, suffix)| suffix)
            })
            .skip(1)
            .map(|suffix| (true, suffix));
            std::iter::once((wildcard, name))
                .chain(covering)
                .find_map(|owned| {
                    let &(owner_ns, owner) = self.owners.get(&owned)?;
                    let allowed = owner_ns == namespace
                        || self.grants.contains(&(owned, owner_ns, namespace));
                    (!allowed).then_some(Trespass {
                        hostname,
                        owned,
                        namespace: owner_ns,
                        owner,
                        guest: namespace,
                    })
                })
        })
    }

    /// Gives `hostnames` that have no owner yet to the namespace of `route`, which is served.
    pub(super) fn claim(&mut self, route: &'a RouteKey, hostnames: &'a [Arc<str>]) {
        for hostname in hostnames {
            self.owners
                .entry(host_key(hostname))
                .or_insert((route.namespace.as_str(), route));
        }
    }
}

impl fmt::Display for Trespass<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Trespass {
            hostname,
            owned,
            namespace,
            owner,
            guest,
        } = self;
        let owned = match owned {
            (true, suffix) => format!("*.{suffix}"),
            (false, name) => (*name).to_owned(),
        };
        if owned == *hostname {
            write!(f, "hostname {hostname} belongs to namespace {namespace}")?;
        } else {
            write!(
                f,
                "hostname {hostname} is under {owned}, which belongs to namespace {namespace}"
            )?;
        }
        write!(
            f,
            " (its oldest route is {owner}); a route of {namespace} on {owned} can grant it with `hostnameGrants: [{{namespace: {guest}}}]`, or use another hostname"
        )
    }
}
