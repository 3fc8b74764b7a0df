//! How Kubernetes API errors read in wsgate's messages: the API server's own sentence and
//! code, not the client library's debug dump of the whole Status (which repeats the message
//! three times and runs to thousands of characters).

/// `error` in one short line: for an API answer, its message and code; otherwise the
/// client's description (connection refused, timeout, ...).
pub fn brief(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_answer_is_its_message_and_code() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "message": "leases.coordination.k8s.io \"wsgate\" is forbidden: User \"wsgate\" cannot get resource \"leases\"",
            "reason": "Forbidden",
            "code": 403,
        }))
        .expect("status");
        let line = brief(&kube::Error::Api(Box::new(status)));
        assert_eq!(
            line,
            "leases.coordination.k8s.io \"wsgate\" is forbidden: User \"wsgate\" cannot get resource \"leases\" (403)"
        );
    }
}
