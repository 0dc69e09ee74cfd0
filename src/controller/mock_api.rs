//! A mock API server for tests of the controller's requests: a kube [`Client`] over a
//! tower service that records every request and answers as the test says.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::api::DynamicObject;
use kube::client::Body;
use kube::runtime::{reflector, watcher};
use kube::Client;

use super::analysis::Analysis;
use super::context::{Config, Context, State, Stores};
use super::events::EventPublisher;
use crate::router::{Kind, Routers, Watched};

/// One request the controller made.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: serde_json::Value,
}

/// A client whose API server records each request and answers with the status code and
/// JSON body `respond` gives for it.
pub fn mock_client(
    respond: impl Fn(&Seen) -> (u16, serde_json::Value) + Send + Sync + 'static,
) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let respond = Arc::new(respond);
    let service = tower::service_fn(move |req: Request<Body>| {
        let log = log.clone();
        let respond = respond.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let request = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            };
            let (code, answer) = respond(&request);
            log.lock().unwrap().push(request);
            let response = Response::builder()
                .status(code)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    (Client::new(service, "default"), seen)
}

/// The API server's answer for a group version it does not serve.
pub fn not_found() -> (u16, serde_json::Value) {
    (
        404,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"}),
    )
}

/// A controller context over `client`, with the routers' caches holding `routed` and
/// every router kind served.
pub fn context(client: Client, routed: Vec<DynamicObject>) -> Context {
    let routers = Routers::new("sluice-proxy:test".into(), 2);
    let served: Vec<Kind> = routers.watched().iter().map(|w| w.kind).collect();
    let stores = routers
        .watched()
        .into_iter()
        .map(|watched: Watched| {
            let mut writer = reflector::store::Writer::new(watched.kind.api_resource());
            for o in routed.iter().filter(|o| watched.kind.is_kind_of(o)) {
                writer.apply_watcher_event(&watcher::Event::Apply(o.clone()));
            }
            (watched, writer.as_reader())
        })
        .collect();
    let state = State::new();
    Context {
        client: client.clone(),
        stores: Stores {
            deployments: reflector::store().0,
            services: reflector::store().0,
            autoscalers: reflector::store().0,
            config_maps: reflector::store().0,
            secrets: reflector::store().0,
            metric_templates: reflector::store().0,
            alert_providers: reflector::store().0,
            metrics_pods: vec![],
            routed: stores,
            served: served.into_iter().collect(),
        },
        events: EventPublisher::new(client.clone(), "test".into()),
        metrics: state.metrics.clone(),
        diagnostics: state.diagnostics.clone(),
        config: Config {
            default_provider: crate::api::RouterKind::Istio,
            metrics_server: None,
            proxy_image: "sluice-proxy:test".into(),
            router_replicas: 2,
            gamma_by_mesh: false,
        },
        analysis: Analysis::new(None).unwrap(),
        routers,
        http: reqwest::Client::new(),
        written: Default::default(),
    }
}
