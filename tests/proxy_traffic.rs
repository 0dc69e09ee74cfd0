//! Traffic control through the real proxy: weighted split, header match (dark launch),
//! mirroring, default routes, config validation and reload, metrics and admin views.
mod proxy_common;

use std::time::Duration;

use proxy_common::*;

fn catalog_yaml(v1: std::net::SocketAddr, v2: std::net::SocketAddr, routes: &str) -> String {
    format!(
        r#"
namespace: istioinaction
virtualServices:
- apiVersion: networking.istio.io/v1beta1
  kind: VirtualService
  metadata: {{name: catalog}}
  spec:
    hosts: [catalog]
    http:
{routes}
destinationRules:
- apiVersion: networking.istio.io/v1beta1
  kind: DestinationRule
  metadata: {{name: catalog}}
  spec:
    host: catalog
    subsets:
    - {{name: version-v1, labels: {{version: v1}}}}
    - {{name: version-v2, labels: {{version: v2}}}}
endpoints:
- {{service: catalog, address: "{v1}", labels: {{app: catalog, version: v1}}, workload: catalog-v1}}
- {{service: catalog, address: "{v2}", labels: {{app: catalog, version: v2}}, workload: catalog-v2}}
"#
    )
}

const DARK_LAUNCH_AND_SPLIT: &str = r#"    - match:
      - headers:
          x-istio-cohort: {exact: internal}
      route:
      - destination: {host: catalog, subset: version-v2}
    - route:
      - {destination: {host: catalog, subset: version-v1}, weight: 90}
      - {destination: {host: catalog, subset: version-v2}, weight: 10}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_90_10_over_10000_requests() {
    let v1 = demo("catalog", "v1", |c| c.catalog = true).await;
    let v2 = demo("catalog", "v2", |c| c.catalog = true).await;
    let proxy = start_proxy(
        &catalog_yaml(v1.addr, v2.addr, DARK_LAUNCH_AND_SPLIT),
        settings("istioinaction", false),
    )
    .await;
    let client = HttpClient::default();
    const TOTAL: usize = 10_000;
    const WORKERS: usize = 8;
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let client = client.clone();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut v2_answers = 0usize;
            for _ in 0..TOTAL / WORKERS {
                let reply = client.get(addr, "catalog", "/items", &[]).await;
                assert_eq!(reply.status, 200);
                // The material's check: v2 answers carry imageUrl.
                if reply.body.contains("imageUrl") {
                    v2_answers += 1;
                }
            }
            v2_answers
        }));
    }
    let mut v2_answers = 0;
    for t in tasks {
        v2_answers += t.await.unwrap();
    }
    let percent = v2_answers as f64 * 100.0 / TOTAL as f64;
    assert!(
        (percent - 10.0).abs() <= 1.5,
        "v2 got {percent}% of {TOTAL}"
    );
    assert_eq!(v1.served() + v2.served(), TOTAL as u64);

    // The live weights are visible like `istioctl proxy-config routes`.
    let routes = client.admin(&proxy, "/config/routes").await.json();
    let split = &routes[0]["routes"][1]["route"];
    assert_eq!(split[0]["percent"], 90.0);
    assert_eq!(split[1]["percent"], 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dark_launch_by_header_and_short_host_names() {
    let v1 = demo("catalog", "v1", |_| {}).await;
    let v2 = demo("catalog", "v2", |_| {}).await;
    let routes = r#"    - match:
      - headers:
          x-istio-cohort: {exact: internal}
      route:
      - destination: {host: catalog, subset: version-v2}
    - route:
      - destination: {host: catalog, subset: version-v1}"#;
    let proxy = start_proxy(
        &catalog_yaml(v1.addr, v2.addr, routes),
        settings("istioinaction", false),
    )
    .await;
    let client = HttpClient::default();
    for host in [
        "catalog",
        "catalog:80",
        "catalog.istioinaction",
        "catalog.istioinaction.svc",
        "catalog.istioinaction.svc.cluster.local",
    ] {
        for _ in 0..5 {
            let internal = client
                .get(proxy.addr, host, "/", &[("x-istio-cohort", "internal")])
                .await;
            assert_eq!(internal.json()["version"], "v2", "{host}");
            let others = client.get(proxy.addr, host, "/", &[]).await;
            assert_eq!(others.json()["version"], "v1", "{host}");
            let other_cohort = client
                .get(proxy.addr, host, "/", &[("x-istio-cohort", "external")])
                .await;
            assert_eq!(other_cohort.json()["version"], "v1", "{host}");
        }
    }
    // The backend sees the Host the client sent.
    let reply = client.get(proxy.addr, "catalog", "/", &[]).await;
    assert_eq!(reply.json()["host"], "catalog");
    // Unknown host: 404 with flag NR in metrics.
    let unknown = client.get(proxy.addr, "nowhere", "/", &[]).await;
    assert_eq!(unknown.status, 404);
    let metrics = client.admin(&proxy, "/metrics").await.body;
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[("response_flags", "NR")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_copies_with_shadow_host_and_hides_failures() {
    let v1 = demo("catalog", "v1", |_| {}).await;
    // The mirror target fails every call: the client must not notice.
    let v2 = demo("catalog", "v2", |c| c.error_rate = 1.0).await;
    let routes = r#"    - route:
      - destination: {host: catalog, subset: version-v1}
        weight: 100
      mirror: {host: catalog, subset: version-v2}
      mirrorPercentage: {value: 100.0}"#;
    let proxy = start_proxy(
        &catalog_yaml(v1.addr, v2.addr, routes),
        settings("istioinaction", false),
    )
    .await;
    let client = HttpClient::default();
    for _ in 0..10 {
        let reply = client.get(proxy.addr, "catalog", "/items", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["version"], "v1");
    }
    // Fire and forget: wait (bounded) for the copies to land.
    for _ in 0..100 {
        if v2.served() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(v2.served(), 10);
    assert_eq!(v1.served(), 10);
    assert!(
        v2.received()
            .iter()
            .all(|r| r.host == "catalog-shadow" && r.path == "/items"),
        "{:?}",
        v2.received()
    );

    // A mirror whose endpoint refuses connections is also invisible.
    let closed = closed_port().await;
    let unreachable_mirror = catalog_yaml(v1.addr, closed, routes);
    proxy.proxy.apply(&parse(&unreachable_mirror)).unwrap();
    for _ in 0..5 {
        let reply = client.get(proxy.addr, "catalog", "/", &[]).await;
        assert_eq!(reply.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_rejected_naming_object_and_field_and_last_good_stays() {
    let v1 = demo("catalog", "v1", |_| {}).await;
    let v2 = demo("catalog", "v2", |_| {}).await;
    let good = catalog_yaml(v1.addr, v2.addr, DARK_LAUNCH_AND_SPLIT);
    let dir = std::env::temp_dir().join(format!("sluice-proxy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, &good).unwrap();
    let proxy = start_proxy(&good, settings("istioinaction", false)).await;
    let watcher = tokio::spawn(sluice::proxy::watch_file(
        proxy.proxy.clone(),
        path.clone(),
        Duration::from_millis(50),
    ));
    let client = HttpClient::default();

    // Every weight 0: rejected at construction.
    let zero = good
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 0");
    let err = proxy.proxy.apply(&parse(&zero)).unwrap_err().to_string();
    assert_eq!(
        err,
        "VirtualService istioinaction/catalog: spec.http[1].route: the weights sum to 0; at least one destination needs a positive weight"
    );
    // A bad regex, through the file watcher.
    let bad_regex = good.replace("{exact: internal}", "{regex: \"(unclosed\"}");
    std::fs::write(&path, &bad_regex).unwrap();
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        status = client.admin(&proxy, "/config/status").await.json();
        if status["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("regex"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_error = status["lastError"].as_str().unwrap_or_default().to_string();
    assert!(
        last_error.starts_with("VirtualService istioinaction/catalog: spec.http[0].match[0].headers.x-istio-cohort: invalid regex"),
        "{last_error}"
    );
    // The last good config still routes.
    let reply = client
        .get(
            proxy.addr,
            "catalog",
            "/",
            &[("x-istio-cohort", "internal")],
        )
        .await;
    assert_eq!(reply.json()["version"], "v2");
    // Fixing the file applies the new version: all traffic to v2 now.
    let all_v2 = good
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 100");
    std::fs::write(&path, &all_v2).unwrap();
    let mut applied = false;
    for _ in 0..100 {
        if client.admin(&proxy, "/config/status").await.json()["lastError"].is_null() {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(applied, "fixed config was not applied");
    for _ in 0..10 {
        assert_eq!(
            client.get(proxy.addr, "catalog", "/", &[]).await.json()["version"],
            "v2"
        );
    }
    let metrics = client.admin(&proxy, "/metrics").await.body;
    assert!(
        metric_sum(
            &metrics,
            "sluice_proxy_config_reloads_total",
            &[("result", "rejected")]
        ) >= 1.0
    );
    watcher.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_istio_labels_and_buckets() {
    let v1 = demo("catalog", "v1", |_| {}).await;
    let v2 = demo("catalog", "v2", |_| {}).await;
    let routes = r#"    - route:
      - destination: {host: catalog, subset: version-v1}"#;
    let proxy = start_proxy(
        &catalog_yaml(v1.addr, v2.addr, routes),
        settings("istioinaction", false),
    )
    .await;
    let client = HttpClient::default();
    for _ in 0..3 {
        client.get(proxy.addr, "catalog", "/", &[]).await;
    }
    let text = client.admin(&proxy, "/metrics").await.body;
    let labels = [
        ("reporter", "source"),
        ("destination_workload", "catalog-v1"),
        ("destination_workload_namespace", "istioinaction"),
        (
            "destination_service",
            "catalog.istioinaction.svc.cluster.local",
        ),
        ("destination_service_name", "catalog"),
        ("destination_service_namespace", "istioinaction"),
        ("destination_version", "v1"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
        ("connection_security_policy", "unknown"),
        ("source_workload", "unknown"),
    ];
    assert_eq!(
        metric_sum(&text, "istio_requests_total", &labels),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "istio_request_duration_milliseconds_count", &labels),
        3.0
    );
    assert_eq!(metric_sum(&text, "istio_request_bytes_count", &labels), 3.0);
    // The response size is recorded when the body is done; allow the last one to land.
    let mut response_sizes = 0.0;
    for _ in 0..50 {
        let text = client.admin(&proxy, "/metrics").await.body;
        response_sizes = metric_sum(&text, "istio_response_bytes_count", &labels);
        if response_sizes >= 3.0 {
            assert!(metric_sum(&text, "istio_response_bytes_sum", &labels) > 100.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(response_sizes, 3.0);
    for le in ["0.5", "1.0", "3600000.0", "+Inf"] {
        assert!(
            text.contains(&format!("le=\"{le}\"")),
            "bucket {le} missing"
        );
    }
    let endpoints = client.admin(&proxy, "/config/endpoints").await.json();
    assert!(endpoints
        .as_array()
        .is_some_and(|list| list.iter().all(|e| e["health"] == "HEALTHY")));
    // The service itself and the one referenced subset.
    let clusters = client.admin(&proxy, "/config/clusters").await.json();
    assert!(
        clusters.as_array().is_some_and(|l| l.len() == 2),
        "{clusters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream_and_upstream() {
    let v1 = demo("catalog", "v1", |_| {}).await;
    let v2 = demo("catalog", "v2", |_| {}).await;
    let routes = r#"    - route:
      - destination: {host: catalog, subset: version-v2}"#;
    let yaml = catalog_yaml(v1.addr, v2.addr, routes).replace(
        "workload: catalog-v2}",
        "workload: catalog-v2, protocol: h2c}",
    );
    let proxy = start_proxy(&yaml, settings("istioinaction", false)).await;
    let client = HttpClient::h2c();
    for _ in 0..3 {
        let reply = client.get(proxy.addr, "catalog", "/", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["version"], "v2");
        assert_eq!(reply.json()["host"], "catalog");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_rewrite_and_header_operations() {
    let v1 = demo("catalog", "v1", |_| {}).await;
    let v2 = demo("catalog", "v2", |_| {}).await;
    let routes = r#"    - match: [{uri: {prefix: /broken}}]
      fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
      route:
      - destination: {host: catalog, subset: version-v1}
    - match: [{uri: {prefix: /api/catalog}}]
      rewrite: {uri: /items, authority: catalog-internal}
      headers:
        response: {set: {x-served-by: sluice}, remove: [content-type]}
      route:
      - destination: {host: catalog, subset: version-v1}
    - match: [{uri: {regex: "/slow/[0-9]+"}}]
      fault: {delay: {fixedDelay: 200ms, percentage: {value: 100}}}
      route:
      - destination: {host: catalog, subset: version-v2}"#;
    let proxy = start_proxy(
        &catalog_yaml(v1.addr, v2.addr, routes),
        settings("istioinaction", false),
    )
    .await;
    let client = HttpClient::default();
    let aborted = client.get(proxy.addr, "catalog", "/broken", &[]).await;
    assert_eq!(aborted.status, 418);
    assert_eq!(
        v1.served(),
        0,
        "an aborted request never reaches the backend"
    );

    let rewritten = client
        .get(proxy.addr, "catalog", "/api/catalog/7?x=1", &[])
        .await;
    assert_eq!(rewritten.json()["uri"], "/items/7");
    assert_eq!(rewritten.json()["host"], "catalog-internal");
    assert_eq!(rewritten.headers.get("x-served-by").unwrap(), "sluice");
    assert!(rewritten.headers.get("content-type").is_none());

    let started = std::time::Instant::now();
    let delayed = client.get(proxy.addr, "catalog", "/slow/42", &[]).await;
    assert_eq!(delayed.json()["version"], "v2");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the delay was injected"
    );
    assert_eq!(
        client
            .get(proxy.addr, "catalog", "/slow/x", &[])
            .await
            .status,
        404
    );

    let metrics = client.admin(&proxy, "/metrics").await.body;
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[("response_flags", "FI")]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[("response_flags", "DI")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_deeper_in_the_call_graph_by_source_labels() {
    let v1 = demo("catalog", "v1", |c| c.catalog = true).await;
    let v2 = demo("catalog", "v2", |c| c.catalog = true).await;
    // Calls from webapp go to v2; everyone else gets v1.
    let routes = r#"    - match:
      - sourceLabels: {app: webapp}
      route:
      - destination: {host: catalog, subset: version-v2}
    - route:
      - destination: {host: catalog, subset: version-v1}"#;
    let yaml = catalog_yaml(v1.addr, v2.addr, routes);
    let mut webapp_identity = settings("istioinaction", false);
    webapp_identity
        .identity
        .labels
        .insert("app".into(), "webapp".into());
    let webapp_sidecar = start_proxy(&yaml, webapp_identity).await;
    let other_sidecar = start_proxy(&yaml, settings("istioinaction", false)).await;

    let webapp = demo("webapp", "v1", |c| {
        c.upstream_uris = vec!["http://catalog/items".into()];
        c.upstream_proxy = Some(webapp_sidecar.addr);
    })
    .await;
    let client = HttpClient::default();
    let reply = client.get(webapp.addr, "webapp", "/", &[]).await.json();
    let call = &reply["upstream_calls"][0];
    assert_eq!(call["code"], 200, "{reply}");
    assert!(call["response"][0].get("imageUrl").is_some(), "{reply}");

    let direct = client
        .get(other_sidecar.addr, "catalog", "/items", &[])
        .await;
    assert!(!direct.body.contains("imageUrl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_matches_source_labels_against_the_calling_pod() {
    let v1 = demo("catalog", "v1", |c| c.catalog = true).await;
    let v2 = demo("catalog", "v2", |c| c.catalog = true).await;
    let routes = r#"    - match:
      - sourceLabels: {app: webapp}
      route:
      - destination: {host: catalog, subset: version-v2}
    - match:
      - sourceNamespace: istioinaction
        sourceLabels: {app: reviews}
      route:
      - destination: {host: catalog, subset: version-v2}
    - route:
      - destination: {host: catalog, subset: version-v1}"#;
    // Callers as the router learns them from the pods of its namespace; 127.0.0.x stand
    // for pod IPs.
    let yaml = format!(
        "{}callers:\n- {{address: 127.0.0.2, labels: {{app: webapp}}}}\n- {{address: 127.0.0.3, labels: {{app: other}}}}\n- {{address: 127.0.0.5, namespace: istioinaction, labels: {{app: reviews}}}}\n",
        catalog_yaml(v1.addr, v2.addr, routes)
    );
    let mut router_settings = settings("istioinaction", false);
    router_settings.router = true;
    let router = start_proxy(&yaml, router_settings).await;
    for (caller, expect_v2, who) in [
        ([127, 0, 0, 2], true, "webapp"),
        ([127, 0, 0, 3], false, "a pod without the label"),
        ([127, 0, 0, 4], false, "an address that is no known pod"),
        ([127, 0, 0, 5], true, "reviews, by namespace and labels"),
    ] {
        let client = HttpClient::from_address(std::net::IpAddr::from(caller));
        for _ in 0..20 {
            let reply = client.get(router.addr, "catalog", "/items", &[]).await;
            assert_eq!(reply.status, 200, "{who}: {reply:?}");
            assert_eq!(
                reply.body.contains("imageUrl"),
                expect_v2,
                "{who}: {reply:?}"
            );
        }
    }

    let known = HttpClient::default()
        .admin(&router, "/config/callers")
        .await
        .json();
    assert_eq!(known[0]["address"], "127.0.0.2", "{known}");
    assert_eq!(known[0]["labels"]["app"], "webapp", "{known}");
    assert_eq!(known.as_array().map(Vec::len), Some(3), "{known}");

    // A sidecar (not a router) ignores `callers`: it is its own identity, without labels.
    let sidecar = start_proxy(&yaml, settings("istioinaction", false)).await;
    let client = HttpClient::from_address([127, 0, 0, 2].into());
    let reply = client.get(sidecar.addr, "catalog", "/items", &[]).await;
    assert!(!reply.body.contains("imageUrl"), "{reply:?}");
}

/// One backend that answers every request 200 and hands over the request heads it read.
async fn recording_backend() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(std::net::SocketAddr::from((LOOPBACK, 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buffer.drain(..end + 4).collect();
                        let _ = heads.send(String::from_utf8_lossy(&head).to_lowercase());
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_tells_the_application_who_called() {
    let (backend, mut heads) = recording_backend().await;
    let yaml = format!(
        "namespace: istioinaction\nendpoints:\n- {{service: catalog, address: \"{backend}\"}}\n"
    );
    let mut router_settings = settings("istioinaction", false);
    router_settings.router = true;
    let router = start_proxy(&yaml, router_settings).await;
    let client = HttpClient::from_address([127, 0, 0, 2].into());
    let reply = client
        .get(
            router.addr,
            "catalog",
            "/",
            &[("x-forwarded-for", "203.0.113.9")],
        )
        .await;
    assert_eq!(reply.status, 200);
    let head = heads.recv().await.expect("the backend got the request");
    assert!(
        head.contains("x-forwarded-for: 203.0.113.9, 127.0.0.2\r\n"),
        "{head}"
    );
    assert!(head.contains("x-forwarded-proto: http\r\n"), "{head}");

    // A sidecar forwards the header as it came.
    let sidecar = start_proxy(&yaml, settings("istioinaction", false)).await;
    client.get(sidecar.addr, "catalog", "/", &[]).await;
    let head = heads.recv().await.expect("the backend got the request");
    assert!(!head.contains("x-forwarded-for"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_at_weight_0_gets_no_request_not_even_a_retry() {
    // v1 fails a third of its answers, so retries happen; they stay on v1's subset.
    let v1 = demo("catalog", "v1", |c| {
        c.catalog = true;
        c.error_rate = 0.3;
    })
    .await;
    let v2 = demo("catalog", "v2", |c| c.catalog = true).await;
    let routes = |v1_weight: u32, v2_weight: u32| {
        format!(
            "    - retries: {{attempts: 5, retryOn: 5xx}}\n      route:\n      - {{destination: {{host: catalog, subset: version-v1}}, weight: {v1_weight}}}\n      - {{destination: {{host: catalog, subset: version-v2}}, weight: {v2_weight}}}"
        )
    };
    let proxy = start_proxy(
        &catalog_yaml(v1.addr, v2.addr, &routes(100, 0)),
        settings("istioinaction", false),
    )
    .await;
    let client = HttpClient::default();
    let send = |n: usize| {
        let (client, addr) = (client.clone(), proxy.addr);
        async move {
            for _ in 0..n {
                client.get(addr, "catalog", "/items", &[]).await;
            }
        }
    };
    send(300).await;
    assert!(v1.served() >= 300, "v1 served {}", v1.served());
    assert_eq!(v2.served(), 0, "weight 0, with retries");

    // Up to 10 and back to 0: once the reload returns, v2 gets nothing more.
    proxy
        .proxy
        .apply(&parse(&catalog_yaml(v1.addr, v2.addr, &routes(90, 10))))
        .unwrap();
    send(200).await;
    let at_10 = v2.served();
    assert!(at_10 > 0, "weight 10 reached v2");
    proxy
        .proxy
        .apply(&parse(&catalog_yaml(v1.addr, v2.addr, &routes(100, 0))))
        .unwrap();
    send(300).await;
    assert_eq!(v2.served(), at_10, "back at weight 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_and_peak_ewma_avoid_a_slow_backend() {
    let slow_latency = Duration::from_millis(150);
    let mut served_by_slow = Vec::new();
    for balancer in ["ROUND_ROBIN", "LEAST_REQUEST", "PEAK_EWMA"] {
        let fast1 = demo("simple-backend", "v1", |_| {}).await;
        let fast2 = demo("simple-backend", "v2", |_| {}).await;
        let slow = demo("simple-backend", "v3", |c| {
            c.latency.p50 = slow_latency;
            c.latency.p90 = slow_latency;
            c.latency.p99 = slow_latency;
        })
        .await;
        let yaml = format!(
            r#"
namespace: istioinaction
destinationRules:
- metadata: {{name: simple-backend}}
  spec:
    host: simple-backend
    trafficPolicy: {{loadBalancer: {{simple: {balancer}}}}}
endpoints:
- {{service: simple-backend, address: "{}"}}
- {{service: simple-backend, address: "{}"}}
- {{service: simple-backend, address: "{}"}}
"#,
            fast1.addr, fast2.addr, slow.addr
        );
        let proxy = start_proxy(&yaml, settings("istioinaction", false)).await;
        let client = HttpClient::default();
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let client = client.clone();
                let addr = proxy.addr;
                tokio::spawn(async move {
                    for _ in 0..30 {
                        assert_eq!(
                            client.get(addr, "simple-backend", "/", &[]).await.status,
                            200
                        );
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let total = fast1.served() + fast2.served() + slow.served();
        assert_eq!(total, 180);
        served_by_slow.push(slow.served());
    }
    eprintln!("calls served by the slow backend (RR, LR, EWMA): {served_by_slow:?}");
    let [round_robin, least_request, peak_ewma] = served_by_slow[..] else {
        panic!("three balancers");
    };
    // Round robin gives the slow backend its third; the latency-aware ones far less.
    assert_eq!(round_robin, 60);
    assert!(
        least_request < 40,
        "least request sent {least_request} to the slow backend"
    );
    assert!(
        peak_ewma < 40,
        "peak EWMA sent {peak_ewma} to the slow backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_prefers_own_zone_and_fails_over_when_ejected() {
    let zone_a = demo("simple-backend", "v1", |c| c.error_cycle = vec![]).await;
    let zone_b = demo("simple-backend", "v2", |_| {}).await;
    let yaml = format!(
        r#"
namespace: istioinaction
destinationRules:
- metadata: {{name: simple-backend}}
  spec:
    host: simple-backend
    trafficPolicy:
      outlierDetection: {{consecutive5xxErrors: 1, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 100}}
endpoints:
- {{service: simple-backend, address: "{}", zone: us-west1/us-west1-a}}
- {{service: simple-backend, address: "{}", zone: us-west1/us-west1-b}}
"#,
        zone_a.addr, zone_b.addr
    );
    let mut own = settings("istioinaction", false);
    own.zone = "us-west1/us-west1-a".into();
    let proxy = start_proxy(&yaml, own.clone()).await;
    let client = HttpClient::default();
    for _ in 0..10 {
        assert_eq!(
            client
                .get(proxy.addr, "simple-backend", "/", &[])
                .await
                .status,
            200
        );
    }
    assert_eq!((zone_a.served(), zone_b.served()), (10, 0));

    // The local backend starts failing: one failure ejects it, calls fail over to zone b.
    let failing_a = demo("simple-backend", "v1", |c| c.error_rate = 1.0).await;
    let failing = yaml.replace(&zone_a.addr.to_string(), &failing_a.addr.to_string());
    proxy.proxy.apply(&parse(&failing)).unwrap();
    let mut failures = 0;
    for _ in 0..10 {
        if client
            .get(proxy.addr, "simple-backend", "/", &[])
            .await
            .status
            != 200
        {
            failures += 1;
        }
    }
    assert_eq!(failures, 1);
    assert_eq!(failing_a.served(), 1);
    assert_eq!(zone_b.served(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_user_on_one_pod() {
    let pods = [
        demo("catalog", "v1", |c| c.pod = "catalog-a".into()).await,
        demo("catalog", "v1", |c| c.pod = "catalog-b".into()).await,
        demo("catalog", "v1", |c| c.pod = "catalog-c".into()).await,
    ];
    let yaml = format!(
        r#"
namespace: istioinaction
destinationRules:
- metadata: {{name: catalog}}
  spec:
    host: catalog
    trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}}}
endpoints:
- {{service: catalog, address: "{}"}}
- {{service: catalog, address: "{}"}}
- {{service: catalog, address: "{}"}}
"#,
        pods[0].addr, pods[1].addr, pods[2].addr
    );
    let proxy = start_proxy(&yaml, settings("istioinaction", false)).await;
    let client = HttpClient::default();
    let mut pods_used = std::collections::BTreeSet::new();
    for user in 0..12 {
        let user = format!("user-{user}");
        let first = client
            .get(proxy.addr, "catalog", "/", &[("x-user", &user)])
            .await
            .json()["pod"]
            .clone();
        for _ in 0..5 {
            let again = client
                .get(proxy.addr, "catalog", "/", &[("x-user", &user)])
                .await;
            assert_eq!(again.json()["pod"], first, "{user} moved");
        }
        pods_used.insert(first.to_string());
    }
    assert!(pods_used.len() >= 2, "12 users all landed on {pods_used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_cookie_with_ttl_is_issued_and_sticks() {
    let pods = [
        demo("catalog", "v1", |c| c.pod = "catalog-a".into()).await,
        demo("catalog", "v1", |c| c.pod = "catalog-b".into()).await,
        demo("catalog", "v1", |c| c.pod = "catalog-c".into()).await,
    ];
    let yaml = format!(
        r#"
namespace: istioinaction
destinationRules:
- metadata: {{name: catalog}}
  spec:
    host: catalog
    trafficPolicy:
      loadBalancer: {{consistentHash: {{httpCookie: {{name: sticky, path: /, ttl: 90s}}}}}}
endpoints:
- {{service: catalog, address: "{}"}}
- {{service: catalog, address: "{}"}}
- {{service: catalog, address: "{}"}}
"#,
        pods[0].addr, pods[1].addr, pods[2].addr
    );
    let proxy = start_proxy(&yaml, settings("istioinaction", false)).await;
    let client = HttpClient::default();
    let mut pods_used = std::collections::BTreeSet::new();
    for session in 0..12 {
        let first = client.get(proxy.addr, "catalog", "/", &[]).await;
        assert_eq!(first.status, 200);
        let set_cookie = first
            .headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("session {session}: no Set-Cookie: {:?}", first.headers))
            .to_string();
        let parts: Vec<&str> = set_cookie.split("; ").collect();
        let value = parts[0]
            .strip_prefix("sticky=")
            .unwrap_or_else(|| panic!("{set_cookie}"));
        assert!(!value.is_empty(), "{set_cookie}");
        assert_eq!(
            parts[1..],
            ["Max-Age=90", "Path=/", "HttpOnly"],
            "{set_cookie}"
        );
        let pod = first.json()["pod"].clone();
        let cookie = format!("other=1; sticky={value}");
        for _ in 0..5 {
            let again = client
                .get(proxy.addr, "catalog", "/", &[("cookie", &cookie)])
                .await;
            assert_eq!(again.json()["pod"], pod, "session {session} moved");
            // The client has the cookie: nothing new is issued.
            assert!(again.headers.get("set-cookie").is_none());
        }
        pods_used.insert(pod.to_string());
    }
    assert!(
        pods_used.len() >= 2,
        "12 sessions all landed on {pods_used:?}"
    );
}
