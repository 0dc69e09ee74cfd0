//! The admin port: `/metrics`, the live config like `istioctl proxy-config`
//! (`/config/routes`, `/config/clusters`, `/config/endpoints`), the router's known
//! callers (`/config/callers`), `/config/status`,
//! Envoy-style counters at `/stats`, `/healthz` (alive) and `/readyz` (ready for traffic,
//! or why not).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::proxy::config::Snapshot;
use crate::proxy::routes::StringMatcher;
use crate::proxy::Proxy;

pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&proxy, req, peer.ip())) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `/config/*` shows every route, endpoint and caller: only to this host (in a pod: its
/// own network namespace, which `kubectl port-forward` reaches) unless opened.
fn config_allowed(path: &str, peer: IpAddr, open: bool) -> bool {
    !path.starts_with("/config/") || open || peer.to_canonical().is_loopback()
}

fn handle(proxy: &Proxy, req: Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
    let snapshot = proxy.snapshot();
    if !config_allowed(req.uri().path(), peer, proxy.options.admin_config_open) {
        return text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "the /config views answer only local clients: kubectl port-forward to the admin port, or run with --admin-config-open\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" | "/stats/prometheus" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            proxy.metrics.encode(),
        ),
        "/config/routes" => as_json(&routes_view(&snapshot)),
        "/config/clusters" => as_json(&clusters_view(&snapshot)),
        "/config/endpoints" => as_json(&endpoints_view(&snapshot)),
        "/config/callers" => as_json(&callers_view(&snapshot)),
        "/config/status" => as_json(&json!({
            "lastError": proxy.last_error(),
            "rejectedObjects": proxy.rejected_objects(),
            "warnings": snapshot.warnings,
            "defaultRetries": snapshot.default_retry.is_some(),
            "defaultRetryPolicy": snapshot.default_retry.as_ref().map(retry_view),
        })),
        "/stats" => text(StatusCode::OK, "text/plain", envoy_stats(&snapshot)),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" | "/ready" => match proxy.readiness() {
            problems if problems.is_empty() => text(StatusCode::OK, "text/plain", "ready\n".into()),
            problems => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {}\n", problems.join("; ")),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

fn as_json(value: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_string_pretty(value).unwrap_or_default();
    body.push('\n');
    text(StatusCode::OK, "application/json", body)
}

/// Router mode: the pods known as callers, by address (sorted).
fn callers_view(snapshot: &Snapshot) -> Value {
    let mut callers: Vec<_> = snapshot.callers.iter().collect();
    callers.sort_by_key(|(address, _)| **address);
    Value::Array(
        callers
            .into_iter()
            .map(|(address, who)| {
                json!({"address": address.to_string(), "namespace": who.namespace, "labels": who.labels})
            })
            .collect(),
    )
}

fn matcher_map(items: &[(String, StringMatcher)]) -> Value {
    items
        .iter()
        .map(|(k, m)| (k.clone(), json!(m.describe())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub fn routes_view(snapshot: &Snapshot) -> Value {
    let hosts: Vec<Value> = snapshot
        .table
        .virtual_hosts
        .iter()
        .map(|vh| {
            let routes: Vec<Value> = vh
                .routes
                .iter()
                .map(|r| {
                    let matches: Vec<Value> = r
                        .matches
                        .iter()
                        .map(|m| {
                            json!({
                                "uri": m.uri.as_ref().map(StringMatcher::describe),
                                "method": m.method.as_ref().map(StringMatcher::describe),
                                "authority": m.authority.as_ref().map(StringMatcher::describe),
                                "headers": matcher_map(&m.headers),
                                "withoutHeaders": matcher_map(&m.without_headers),
                                "queryParams": matcher_map(&m.query_params),
                                "ignoreUriCase": m.ignore_uri_case,
                                "sourceLabels": m.source_labels,
                            })
                        })
                        .collect();
                    let destinations: Vec<Value> = r
                        .destinations
                        .shares()
                        .map(|(d, share)| json!({ "cluster": d.cluster.to_string(), "percent": (share * 10000.0).round() / 100.0 }))
                        .collect();
                    json!({
                        "name": r.name,
                        "match": matches,
                        "route": destinations,
                        "timeout": r.timeout.map(|t| format!("{}ms", t.as_millis())),
                        "retries": r.retries.as_ref().map(retry_view),
                        "mirrors": r.mirrors.iter().map(|m| json!({"cluster": m.cluster.to_string(), "percent": m.percent})).collect::<Vec<_>>(),
                        "fault": r.fault.as_ref().map(|f| format!("{f:?}")),
                    })
                })
                .collect();
            json!({ "virtualService": vh.name, "hosts": vh.hosts, "routes": routes })
        })
        .collect();
    json!(hosts)
}

/// A retry policy as a VirtualService's `retries` writes it.
fn retry_view(p: &crate::proxy::resilience::RetryPolicy) -> Value {
    json!({
        "attempts": p.attempts,
        "perTryTimeout": p.per_try_timeout.map(|t| format!("{}ms", t.as_millis())),
        "retryOn": p.conditions.to_string(),
    })
}

pub fn clusters_view(snapshot: &Snapshot) -> Value {
    let mut clusters: Vec<_> = snapshot.clusters.values().collect();
    clusters.sort_by(|a, b| a.key.cmp(&b.key));
    let list: Vec<Value> = clusters
        .iter()
        .map(|c| {
            let limits = c.pool.limits();
            let overflow: serde_json::Map<String, Value> = c
                .pool
                .overflow_counts()
                .iter()
                .map(|(kind, n)| (kind.label().to_string(), json!(n)))
                .collect();
            json!({
                "name": c.key.to_string(),
                "service": c.key.service,
                "subset": c.key.subset,
                "destinationRule": c.destination_rule,
                "loadBalancer": c.algorithm.name(),
                "localityAware": c.locality_aware,
                "localityDistribute": c.locality_rules.distribute.iter()
                    .map(|d| json!({"from": d.from, "to": d.to}))
                    .collect::<Vec<_>>(),
                "localityFailover": c.locality_rules.failover.iter()
                    .map(|(from, to)| json!({"from": from, "to": to}))
                    .collect::<Vec<_>>(),
                "consistentHash": c.hash_policy.as_ref().map(|h| h.describe()),
                "connectionPool": {
                    "maxConnections": limits.max_connections,
                    "http1MaxPendingRequests": limits.max_pending,
                    "http2MaxRequests": limits.max_requests,
                    "maxRetries": limits.max_retries,
                    "maxRequestsPerConnection": limits.max_requests_per_connection,
                },
                "outlierDetection": c.outlier.as_ref().map(|o| json!({
                    "consecutive5xxErrors": o.consecutive_5xx,
                    "consecutiveGatewayErrors": o.consecutive_gateway,
                    "intervalMs": o.interval.as_millis() as u64,
                    "baseEjectionTimeMs": o.base_ejection.as_millis() as u64,
                    "maxEjectionPercent": o.max_ejection_percent,
                    "minHealthPercent": o.min_health_percent,
                })),
                "endpoints": c.endpoints.len(),
                "overflow": overflow,
            })
        })
        .collect();
    json!(list)
}

pub fn endpoints_view(snapshot: &Snapshot) -> Value {
    let now = Instant::now();
    let mut clusters: Vec<_> = snapshot.clusters.values().collect();
    clusters.sort_by(|a, b| a.key.cmp(&b.key));
    let mut list = Vec::new();
    for c in clusters {
        for e in &c.endpoints {
            let ejected = e.is_ejected(now);
            list.push(json!({
                "endpoint": e.info.address.to_string(),
                "status": if ejected { "UNHEALTHY" } else { "HEALTHY" },
                "outlierCheck": if ejected { "FAILED" } else { "OK" },
                "health": if ejected { "FAILED" } else { "HEALTHY" },
                "cluster": c.key.to_string(),
                "labels": e.info.labels,
                "zone": e.info.zone,
                "workload": e.info.workload,
                "inFlight": e.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                "ejections": e.ejections_total.load(std::sync::atomic::Ordering::Relaxed),
            }));
        }
    }
    json!(list)
}

/// Envoy-style counter lines, for users who grep `pilot-agent request GET stats`.
fn envoy_stats(snapshot: &Snapshot) -> String {
    let mut clusters: Vec<_> = snapshot.clusters.values().collect();
    clusters.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = String::new();
    for c in clusters {
        let name = c.key.to_string();
        for (kind, n) in c.pool.overflow_counts() {
            let stat = match kind {
                crate::proxy::resilience::Overflow::Connections => "upstream_cx_overflow",
                crate::proxy::resilience::Overflow::Pending => "upstream_rq_pending_overflow",
                crate::proxy::resilience::Overflow::Requests => "upstream_rq_overflow",
                crate::proxy::resilience::Overflow::Retries => "upstream_rq_retry_overflow",
            };
            out.push_str(&format!("cluster.{name}.{stat}: {n}\n"));
        }
        let ejections: u64 = c
            .endpoints
            .iter()
            .map(|e| e.ejections_total.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        out.push_str(&format!(
            "cluster.{name}.outlier_detection.ejections_enforced_total: {ejections}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_views_answer_local_clients_unless_opened() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // (path, peer, open, allowed)
        for (path, peer, open, allowed) in [
            ("/config/routes", "127.0.0.1", false, true),
            ("/config/routes", "::1", false, true),
            ("/config/routes", "::ffff:127.0.0.1", false, true),
            ("/config/routes", "10.244.0.9", false, false),
            ("/config/callers", "10.244.0.9", true, true),
            ("/metrics", "10.244.0.9", false, true),
            ("/readyz", "10.244.0.9", false, true),
        ] {
            assert_eq!(
                config_allowed(path, ip(peer), open),
                allowed,
                "{path} from {peer}"
            );
        }
    }
}
