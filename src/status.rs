//! Turns compile verdicts into Kubernetes status conditions (Gateway API conventions):
//! `lastTransitionTime` moves only when a condition's status flips. Pure.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::compile::Verdict;

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
                message: c.message.clone(),
                observed_generation: verdict.generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
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
