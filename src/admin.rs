//! The admin listener: `/healthz`, `/readyz`, `/metrics` and `/routes` (the active snapshot
//! and every route's conditions as JSON). Reads the gateway; changes nothing.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::compile::Verdict;
use crate::proxy::Gateway;
use crate::route::Route;
use crate::snapshot::{Snapshot, SourceProblem};

/// Serves the admin endpoints on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            () = crate::proxy::stopped(&mut stop) => return,
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(respond(&req, &gateway)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(req: &Request<Incoming>, gateway: &Gateway) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if gateway.ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(gateway.metrics().render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/routes" => {
            let body = match gateway.snapshot() {
                Some(s) => serde_json::to_vec_pretty(&RoutesView::of(&s)),
                None => serde_json::to_vec_pretty(&serde_json::json!({"ready": false})),
            };
            let mut r = Response::new(Full::new(Bytes::from(body.unwrap_or_default())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics or /routes\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The JSON shape of `/routes`.
#[derive(Serialize)]
struct RoutesView<'a> {
    version: u64,
    routes: Vec<RouteView<'a>>,
    problems: &'a [SourceProblem],
}

#[derive(Serialize)]
struct RouteView<'a> {
    namespace: &'a str,
    name: &'a str,
    programmed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    origins: Option<OriginsView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<Vec<String>>,
    conditions: Vec<ConditionView<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OriginsView {
    allow: Vec<String>,
    allow_null: bool,
    allow_missing: bool,
}

#[derive(Serialize)]
struct ConditionView<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    status: &'static str,
    reason: &'a str,
    message: &'a str,
}

impl<'a> RoutesView<'a> {
    fn of(snapshot: &'a Snapshot) -> RoutesView<'a> {
        let routes = snapshot
            .verdicts
            .iter()
            .map(|v| RouteView::of(v, snapshot.table.get(&v.key).map(|r| &**r)))
            .collect();
        RoutesView {
            version: snapshot.version,
            routes,
            problems: &snapshot.problems,
        }
    }
}

impl<'a> RouteView<'a> {
    fn of(verdict: &'a Verdict, route: Option<&Route>) -> RouteView<'a> {
        RouteView {
            namespace: &verdict.key.namespace,
            name: &verdict.key.name,
            programmed: route.is_some(),
            origins: route.map(|r| OriginsView {
                allow: r.origins.patterns().collect(),
                allow_null: r.origins.allows_null(),
                allow_missing: r.origins.allows_missing(),
            }),
            upstream: route.map(|r| r.upstream.targets.iter().map(ToString::to_string).collect()),
            conditions: verdict
                .conditions
                .iter()
                .map(|c| ConditionView {
                    type_: c.type_,
                    status: if c.status { "True" } else { "False" },
                    reason: c.reason,
                    message: &c.message,
                })
                .collect(),
        }
    }
}
