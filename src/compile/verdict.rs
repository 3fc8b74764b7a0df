//! The vocabulary of a route's outcome: the condition types and reasons status is written
//! with (docs/design.md §4), warnings, and the [`Verdict`] compile gives each route.

use std::borrow::Cow;
use std::fmt;

use crate::route::RouteKey;

/// Condition types (docs/design.md §4).
pub mod condition {
    /// The spec is valid and the route owns its host and path.
    pub const ACCEPTED: &str = "Accepted";
    /// The upstream (and any Secret) exists and has ready endpoints.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// The route is in the data plane's active snapshot.
    pub const PROGRAMMED: &str = "Programmed";
    /// All of the above.
    pub const READY: &str = "Ready";
}

/// Condition reasons (docs/design.md §4). Each is also a metric label and an Event reason.
pub mod reason {
    /// Accepted=True.
    pub const ACCEPTED: &str = "Accepted";
    /// The spec is invalid.
    pub const INVALID: &str = "Invalid";
    /// Another route owns the same host and path.
    pub const CONFLICTED: &str = "Conflicted";
    /// ResolvedRefs=True.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// The referenced Service (or mapping) does not exist.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// The referenced Service exists but has no ready endpoint.
    pub const NO_READY_ENDPOINTS: &str = "NoReadyEndpoints";
    /// A referenced Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A referenced Secret lacks a key or holds unusable material.
    pub const INVALID_SECRET: &str = "InvalidSecret";
    /// Programmed=True.
    pub const PROGRAMMED: &str = "Programmed";
    /// The route is not in the active snapshot.
    pub const NOT_PROGRAMMED: &str = "NotProgrammed";
    /// No wsgate replica is left to serve the route (its Deployment was deleted or scaled
    /// to 0); written by the last replica as it stops.
    pub const GATEWAY_STOPPED: &str = "GatewayStopped";
    /// Ready=True.
    pub const READY: &str = "Ready";
}

/// One condition as compile decides it; timestamps are added where status is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConditionState {
    /// One of [`condition`].
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// One of [`reason`].
    pub reason: &'static str,
    /// What a person can act on; most are fixed texts, not copied per route.
    pub message: Cow<'static, str>,
}

/// The outcome of compiling one route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// The route's identity.
    pub key: RouteKey,
    /// `metadata.generation` of the compiled object, if it has one.
    pub generation: Option<i64>,
    /// Accepted, ResolvedRefs, Programmed and Ready, in that order.
    pub conditions: Vec<ConditionState>,
    /// Things that do not stop the route but deserve a warning.
    pub warnings: Vec<Warning>,
}

/// Something that does not stop a route but that its author should know.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Warning {
    /// A CamelCase reason, used as the Event reason (`warning::ANY_ORIGIN`, ...).
    pub reason: &'static str,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Warning reasons.
pub mod warning {
    /// `*` in `origins.allow`: every web page may connect.
    pub const ANY_ORIGIN: &str = "AnyOrigin";
    /// Nothing may connect: `origins.allow` is empty and neither `null` nor a missing
    /// `Origin` is admitted.
    pub const NO_ORIGINS: &str = "NoOrigins";
    /// The hostname's certificate is another, older route's.
    pub const CERTIFICATE_SHADOWED: &str = "CertificateShadowed";
}

impl Verdict {
    /// The condition of this type.
    pub fn condition(&self, type_: &str) -> Option<&ConditionState> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the route is Accepted.
    pub fn accepted(&self) -> bool {
        self.condition(condition::ACCEPTED)
            .is_some_and(|c| c.status)
    }
}

impl fmt::Display for ConditionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} ({}): {}",
            self.type_,
            if self.status { "True" } else { "False" },
            self.reason,
            self.message
        )
    }
}
