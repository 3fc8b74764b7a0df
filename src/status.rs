//! Turns compile verdicts into Kubernetes status conditions (Gateway API conventions):
//! `lastTransitionTime` moves only when a condition's status flips; and a route's spec into
//! the status strings `kubectl get wsr` shows. Pure.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::WebSocketRouteSpec;
use crate::compile::{Verdict, condition, reason};

/// What `kubectl get wsr` shows of a route's spec: lists as one readable string each, since
/// a printer column shows a list as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns {
    /// The hostnames, comma-separated.
    pub hostnames: String,
    /// What may connect: the patterns, `null` and `(no Origin)` when admitted, else `(none)`.
    pub origins: String,
    /// The `url`, or `service NAME:PORT`.
    pub upstream: String,
}

/// The columns for `spec`.
pub fn columns(spec: &WebSocketRouteSpec) -> Columns {
    let mut origins: Vec<&str> = spec.origins.allow.iter().map(String::as_str).collect();
    if spec.origins.allow_null {
        origins.push("null");
    }
    if spec.origins.allow_missing {
        origins.push("(no Origin)");
    }
    let upstream = match (&spec.upstream.url, &spec.upstream.service) {
        (Some(url), _) => url.clone(),
        (None, Some(service)) => format!("service {}:{}", service.name, service.port),
        (None, None) => String::new(),
    };
    Columns {
        hostnames: spec.hostnames.join(", "),
        origins: if origins.is_empty() {
            "(none)".to_owned()
        } else {
            origins.join(", ")
        },
        upstream,
    }
}

/// The conditions for `verdict`, keeping each previous `lastTransitionTime` whose status
/// did not change and stamping `now` on the others.
pub fn conditions(verdict: &Verdict, previous: &[Condition], now: Timestamp) -> Vec<Condition> {
    verdict
        .conditions
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: c.type_.to_owned(),
                status: status.to_owned(),
                reason: c.reason.to_owned(),
                message: c.message.to_string(),
                observed_generation: verdict.generation,
                last_transition_time,
            }
        })
        .collect()
}

/// `verdict` as the last replica leaves it: `Programmed` and `Ready` False with reason
/// `GatewayStopped` and `message`, since nothing serves the route any more; `Accepted` and
/// `ResolvedRefs` still describe the spec and stay as they were.
pub fn stopped(verdict: &Verdict, message: &str) -> Verdict {
    let mut stopped = verdict.clone();
    for c in &mut stopped.conditions {
        if c.type_ == condition::PROGRAMMED || c.type_ == condition::READY {
            c.status = false;
            c.reason = reason::GATEWAY_STOPPED;
            c.message = message.to_owned().into();
        }
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_show_lists_as_text_and_say_when_nothing_may_connect() {
        let spec =
            |yaml: &str| -> WebSocketRouteSpec { serde_saphyr::from_str(yaml).expect("spec") };
        let c = columns(&spec(
            "hostnames: [a.example.com, \"*.example.com\"]\norigins: {allow: [\"https://a.example.com\"], allowNull: true, allowMissing: true}\nupstream: {service: {name: chat, port: 8080}}\n",
        ));
        assert_eq!(c.hostnames, "a.example.com, *.example.com");
        assert_eq!(c.origins, "https://a.example.com, null, (no Origin)");
        assert_eq!(c.upstream, "service chat:8080");
        let c = columns(&spec(
            "hostnames: [a.example.com]\nupstream: {url: \"ws://10.0.0.5:80/ws\"}\n",
        ));
        assert_eq!(
            (c.origins.as_str(), c.upstream.as_str()),
            ("(none)", "ws://10.0.0.5:80/ws")
        );
    }
    use crate::compile::ConditionState;
    use crate::route::RouteKey;

    fn verdict(ready: bool) -> Verdict {
        Verdict {
            key: RouteKey {
                namespace: "ns".into(),
                name: "r".into(),
            },
            generation: Some(3),
            conditions: vec![ConditionState {
                type_: "Ready",
                status: ready,
                reason: if ready { "Ready" } else { "Invalid" },
                message: "m".into(),
            }],
            warnings: vec![],
        }
    }

    #[test]
    fn a_stopped_route_is_neither_programmed_nor_ready_but_keeps_its_other_conditions() {
        let state = |type_, reason| ConditionState {
            type_,
            status: true,
            reason,
            message: "m".into(),
        };
        let mut served = verdict(true);
        served.conditions = vec![
            state(condition::ACCEPTED, reason::ACCEPTED),
            state(condition::RESOLVED_REFS, reason::RESOLVED_REFS),
            state(condition::PROGRAMMED, reason::PROGRAMMED),
            state(condition::READY, reason::READY),
        ];
        let gone = stopped(&served, "no replica");
        assert_eq!(gone.conditions[..2], served.conditions[..2]);
        for c in &gone.conditions[2..] {
            assert_eq!(
                (c.status, c.reason, c.message.as_ref()),
                (false, reason::GATEWAY_STOPPED, "no replica")
            );
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("timestamp");
        let t1: Timestamp = "2026-01-02T00:00:00Z".parse().expect("timestamp");
        let first = conditions(&verdict(true), &[], t0);
        assert_eq!(first[0].last_transition_time.0, t0);
        assert_eq!(first[0].observed_generation, Some(3));
        let same = conditions(&verdict(true), &first, t1);
        assert_eq!(same[0].last_transition_time.0, t0);
        let flipped = conditions(&verdict(false), &first, t1);
        assert_eq!(flipped[0].last_transition_time.0, t1);
        assert_eq!(flipped[0].status, "False");
    }
}
