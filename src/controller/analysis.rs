//! Runs a Canary's metric checks: picks the provider for each check (the Canary's or the
//! controller's Prometheus, a MetricTemplate's provider, or the built-in scrape of the
//! sluice routers), renders the query and turns the answer into a [`MetricOutcome`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use parking_lot::Mutex;

use super::context::Stores;
use crate::analysis::{
    self, BuiltinQuery, MetricQuery, MetricsProvider, PrometheusAuth, PrometheusConfig,
    PrometheusProvider, ScrapeConfig, ScrapeProvider, TemplateVars,
};
use crate::api::Canary;
use crate::rollout::{MetricCheck, MetricError, MetricOutcome, MetricSource, ReleaseSpec};
use crate::router::{MetricsPods, TrafficRouter};

/// Where the built-in metrics of a Canary are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuiltinSource {
    /// The Canary's `metricsServer`, or the controller's.
    Prometheus(String),
    /// The router's own pods, scraped by the controller.
    Scrape(MetricsPods),
}

/// A Prometheus when one is set; otherwise the router's pods when it has pods that
/// serve the series; otherwise an error that says what to set.
pub fn builtin_source(
    metrics_server: Option<String>,
    router: &dyn TrafficRouter,
    canary: &Canary,
) -> Result<BuiltinSource, analysis::Error> {
    match (metrics_server, router.metrics_pods(canary)) {
        (Some(address), _) => Ok(BuiltinSource::Prometheus(address)),
        (None, Some(pods)) => Ok(BuiltinSource::Scrape(pods)),
        (None, None) => Err(analysis::Error::BadConfig {
            reason: format!(
                "built-in metrics of provider {} need a Prometheus: set spec.metricsServer or the controller's --metrics-server",
                router.kind().as_str()
            ),
        }),
    }
}

/// The Prometheus for a Canary's metrics: its own, else the controller's; empty is none.
fn metrics_server_of(spec: Option<&str>, default: Option<&str>) -> Option<String> {
    spec.or(default).filter(|s| !s.is_empty()).map(String::from)
}

/// Reads MetricTemplates, their Secrets and the router pods from the controller's
/// caches: a check makes no request to the API server.
pub struct Analysis {
    default_metrics_server: Option<String>,
    scrape: Arc<ScrapeProvider>,
    /// Providers without credentials, by address, so the HTTP client is reused.
    prometheus: Mutex<HashMap<String, Arc<PrometheusProvider>>>,
    /// Providers with credentials, headers or TLS settings, by MetricTemplate
    /// (`namespace/name`), kept while the template's settings stay the same.
    configured: Mutex<HashMap<String, (PrometheusConfig, Arc<PrometheusProvider>)>>,
}

impl Analysis {
    pub fn new(default_metrics_server: Option<String>) -> Result<Self, analysis::Error> {
        Ok(Analysis {
            default_metrics_server,
            scrape: Arc::new(ScrapeProvider::new(ScrapeConfig::default())?),
            prometheus: Mutex::default(),
            configured: Mutex::default(),
        })
    }

    /// Prometheus address for built-in metrics, if any.
    fn metrics_server(&self, canary: &Canary) -> Option<String> {
        metrics_server_of(
            canary.spec.metrics_server.as_deref(),
            self.default_metrics_server.as_deref(),
        )
    }

    /// Records a sample of the router metrics when the built-in scrape serves this
    /// Canary, so that the next check has a window to measure over.
    pub async fn sample(&self, canary: &Canary, router: &dyn TrafficRouter, stores: &Stores) {
        let Ok(BuiltinSource::Scrape(wanted)) =
            builtin_source(self.metrics_server(canary), router, canary)
        else {
            return;
        };
        let ns = canary.namespace().unwrap_or_default();
        let urls = metrics_urls(&stores.metrics_pods_in(wanted.selector, &ns), wanted);
        let report = self.scrape.sample(&urls).await;
        for (url, err) in report.failed {
            tracing::debug!(%url, error = %err, "router metrics sample failed");
        }
    }

    pub async fn evaluate(
        &self,
        canary: &Canary,
        spec: &ReleaseSpec,
        router: &dyn TrafficRouter,
        stores: &Stores,
    ) -> Vec<MetricOutcome> {
        let mut outcomes = Vec::with_capacity(spec.metrics.len());
        for check in &spec.metrics {
            let value = self
                .run(canary, check, spec.interval, router, stores)
                .await
                .map_err(|err| match err {
                    err if err.is_no_data() => MetricError::NoData(err.to_string()),
                    err if err.is_warming() => MetricError::Warming(err.to_string()),
                    err => MetricError::Failed(err.to_string()),
                });
            outcomes.push(MetricOutcome {
                name: check.name.clone(),
                range: check.range,
                value,
                on_no_data: check.on_no_data,
            });
        }
        outcomes
    }

    async fn run(
        &self,
        canary: &Canary,
        check: &MetricCheck,
        analysis_interval: Duration,
        router: &dyn TrafficRouter,
        stores: &Stores,
    ) -> Result<f64, analysis::Error> {
        let ns = canary.namespace().unwrap_or_default();
        match &check.source {
            MetricSource::Builtin(metric) => {
                let query = BuiltinQuery {
                    reporter: router.reporter(canary),
                    metric: *metric,
                    namespace: ns,
                    workload: canary.spec.target_ref.name.clone(),
                    interval: check.interval,
                    min_window: check.interval.min(analysis_interval),
                };
                match builtin_source(self.metrics_server(canary), router, canary)? {
                    BuiltinSource::Prometheus(address) => {
                        self.prometheus_for(&address)?
                            .query(&MetricQuery::Builtin(query))
                            .await
                    }
                    BuiltinSource::Scrape(_) => {
                        self.scrape.query(&MetricQuery::Builtin(query)).await
                    }
                }
            }
            MetricSource::Query(query) => {
                let address =
                    self.metrics_server(canary)
                        .ok_or_else(|| analysis::Error::BadConfig {
                            reason: "an inline query needs a Prometheus: set spec.metricsServer"
                                .into(),
                        })?;
                let promql = analysis::render_template(query, &self.vars(canary, check))?;
                self.prometheus_for(&address)?.query_promql(&promql).await
            }
            MetricSource::Template { name, namespace } => {
                let template_ns = namespace.clone().unwrap_or(ns);
                let template = stores
                    .metric_templates
                    .get(&ObjectRef::new(name).within(&template_ns))
                    .ok_or_else(|| analysis::Error::BadConfig {
                        reason: format!("MetricTemplate {template_ns}/{name} not found"),
                    })?;
                let provider = &template.spec.provider;
                let address = provider
                    .address
                    .clone()
                    .or_else(|| self.metrics_server(canary))
                    .ok_or_else(|| analysis::Error::BadConfig {
                        reason: format!(
                            "MetricTemplate {template_ns}/{name} has no provider.address and no metrics server is set"
                        ),
                    })?;
                let auth = match &provider.secret_ref {
                    Some(secret) => {
                        let key = ObjectRef::new(&secret.name).within(&template_ns);
                        let cached = stores.secrets.get(&key);
                        Some(auth_from_secret(
                            cached.as_deref(),
                            &template_ns,
                            &secret.name,
                        )?)
                    }
                    None => None,
                };
                let promql =
                    analysis::render_template(&template.spec.query, &self.vars(canary, check))?;
                let uses_plain_client = auth.is_none()
                    && provider.headers.is_empty()
                    && !provider.insecure_skip_verify.unwrap_or(false);
                let prom = if uses_plain_client {
                    self.prometheus_for(&address)?
                } else {
                    let mut config = PrometheusConfig::new(address);
                    config.auth = auth;
                    config.headers = provider.headers.clone();
                    config.insecure_skip_verify = provider.insecure_skip_verify.unwrap_or(false);
                    self.configured_for(&format!("{template_ns}/{name}"), config)?
                };
                prom.query_promql(&promql).await
            }
        }
    }

    fn vars(&self, canary: &Canary, check: &MetricCheck) -> TemplateVars {
        TemplateVars {
            name: canary.name_any(),
            namespace: canary.namespace().unwrap_or_default(),
            target: canary.spec.target_ref.name.clone(),
            service: canary.service_name().to_string(),
            interval: check.interval,
            variables: canary
                .spec
                .analysis
                .metrics
                .iter()
                .find(|m| m.name == check.name)
                .map(|m| m.template_variables.clone())
                .unwrap_or_default(),
        }
    }

    fn prometheus_for(&self, address: &str) -> Result<Arc<PrometheusProvider>, analysis::Error> {
        let mut cache = self.prometheus.lock();
        if let Some(p) = cache.get(address) {
            return Ok(p.clone());
        }
        let p = Arc::new(PrometheusProvider::new(PrometheusConfig::new(address))?);
        cache.insert(address.to_string(), p.clone());
        Ok(p)
    }

    /// The provider of a MetricTemplate with its own settings: the one made for the
    /// same settings before, else a new one (which replaces it: one per template).
    fn configured_for(
        &self,
        template: &str,
        config: PrometheusConfig,
    ) -> Result<Arc<PrometheusProvider>, analysis::Error> {
        let mut cache = self.configured.lock();
        if let Some((_, p)) = cache
            .get(template)
            .filter(|(made_for, _)| *made_for == config)
        {
            return Ok(p.clone());
        }
        let p = Arc::new(PrometheusProvider::new(config.clone())?);
        cache.insert(template.to_string(), (config, p.clone()));
        Ok(p)
    }
}

/// Basic auth from `username`/`password`, or a bearer `token`, of the cached Secret
/// `ns/name`.
fn auth_from_secret(
    secret: Option<&Secret>,
    ns: &str,
    name: &str,
) -> Result<PrometheusAuth, analysis::Error> {
    let bad = |reason: String| analysis::Error::BadConfig { reason };
    let secret = secret.ok_or_else(|| bad(format!("Secret {ns}/{name} not found")))?;
    let field = |k: &str| {
        secret
            .data
            .as_ref()?
            .get(k)
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
    };
    match (field("username"), field("password"), field("token")) {
        (Some(username), Some(password), _) => Ok(PrometheusAuth::Basic { username, password }),
        (_, _, Some(token)) => Ok(PrometheusAuth::Bearer { token }),
        _ => Err(bad(format!(
            "Secret {ns}/{name} needs username and password, or token"
        ))),
    }
}

/// The metrics URLs of the pods that have an address: the pod's `prometheus.io/port`
/// annotation, else the router's metrics port.
fn metrics_urls(pods: &[Arc<Pod>], wanted: MetricsPods) -> Vec<String> {
    let mut urls: Vec<String> = pods
        .iter()
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_deref()?;
            let port = p
                .annotations()
                .get("prometheus.io/port")
                .and_then(|v| v.parse::<u16>().ok())
                .unwrap_or(wanted.port);
            Some(format!("http://{ip}:{port}/metrics"))
        })
        .collect();
    urls.sort();
    urls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MetricTemplate, RouterKind};
    use crate::router::Routers;
    use k8s_openapi::ByteString;
    use kube::runtime::reflector::{self, Store};
    use kube::runtime::watcher;

    fn store_of<K>(objects: Vec<K>) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone,
    {
        let mut writer = reflector::store::Writer::default();
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::Apply(o));
        }
        writer.as_reader()
    }

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        let mut s: Secret =
            serde_yaml::from_str(&format!("metadata: {{name: {name}, namespace: shop}}")).unwrap();
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        s
    }

    #[test]
    fn credentials_come_from_the_cached_secret() {
        let basic = PrometheusAuth::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        let bearer = PrometheusAuth::Bearer { token: "t".into() };
        let cases: [(Option<Secret>, Result<PrometheusAuth, &str>); 5] = [
            (
                Some(secret("s", &[("username", "u"), ("password", "p\n")])),
                Ok(basic.clone()),
            ),
            (Some(secret("s", &[("token", " t ")])), Ok(bearer)),
            (
                Some(secret(
                    "s",
                    &[("username", "u"), ("password", "p"), ("token", "t")],
                )),
                Ok(basic),
            ),
            (
                Some(secret("s", &[("username", "u")])),
                Err("Secret shop/s needs username and password, or token"),
            ),
            (None, Err("Secret shop/s not found")),
        ];
        for (secret, want) in cases {
            let got = auth_from_secret(secret.as_ref(), "shop", "s").map_err(|e| e.to_string());
            match want {
                Ok(want) => assert!(got.as_ref() == Ok(&want), "{secret:?}"),
                Err(want) => assert!(got.as_ref().unwrap_err().contains(want), "{got:?}"),
            }
        }
    }

    #[test]
    fn metrics_urls_are_the_pods_with_an_address() {
        let pod = |name: &str, ip: Option<&str>, port: Option<&str>| -> Arc<Pod> {
            let annotations = port
                .map(|p| format!(", annotations: {{prometheus.io/port: \"{p}\"}}"))
                .unwrap_or_default();
            let status = ip
                .map(|ip| format!("status: {{podIP: {ip}}}"))
                .unwrap_or_default();
            Arc::new(
                serde_yaml::from_str(&format!(
                    "metadata: {{name: {name}, namespace: shop{annotations}}}\n{status}"
                ))
                .unwrap(),
            )
        };
        let pods = [
            pod("b", Some("10.0.0.2"), None),
            pod("pending", None, None),
            pod("a", Some("10.0.0.1"), Some("9102")),
            pod("odd", Some("10.0.0.3"), Some("not-a-port")),
        ];
        let wanted = MetricsPods {
            selector: "app=r",
            port: 15000,
        };
        assert_eq!(
            metrics_urls(&pods, wanted),
            [
                "http://10.0.0.1:9102/metrics",
                "http://10.0.0.2:15000/metrics",
                "http://10.0.0.3:15000/metrics",
            ]
        );
    }

    /// A check with a MetricTemplate and an authenticated provider reads the template
    /// and its Secret from the caches: no request reaches the API server, and the
    /// provider made for the template is reused while its settings stay the same.
    #[tokio::test]
    async fn a_template_check_makes_no_api_request() {
        let (client, seen) = super::super::mock_api::mock_client(|_| (500, serde_json::json!({})));
        let mut ctx = super::super::mock_api::context(client, vec![]);
        // Nothing listens there: the query fails as offline, after the lookups.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let template: MetricTemplate = serde_yaml::from_str(&format!(
            "metadata: {{name: errors, namespace: shop}}\nspec: {{provider: {{type: prometheus, address: \"{address}\", secretRef: {{name: prom-auth}}}}, query: \"sum(up)\"}}"
        ))
        .unwrap();
        ctx.stores.metric_templates = store_of(vec![template]);
        ctx.stores.secrets = store_of(vec![secret("prom-auth", &[("token", "t")])]);
        let canary: Canary = serde_yaml::from_str(
            "metadata: {name: c, namespace: shop}\nspec: {targetRef: {kind: Deployment, name: app}, service: {port: 80}, analysis: {stepWeight: 10, metrics: [{name: errors, templateRef: {name: errors}, thresholdRange: {max: 1}, interval: 1m}]}}",
        )
        .unwrap();
        let spec = ReleaseSpec::from_spec(&canary.spec).unwrap();
        let router = ctx.routers.for_kind(RouterKind::Istio);
        for _ in 0..2 {
            let outcomes = ctx
                .analysis
                .evaluate(&canary, &spec, router, &ctx.stores)
                .await;
            match &outcomes[0].value {
                Err(MetricError::Failed(why)) => assert!(why.contains("offline"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ctx.analysis.configured.lock().len(), 1);
        assert!(
            seen.lock().unwrap().is_empty(),
            "{:?}",
            seen.lock().unwrap()
        );

        // Without its Secret the check says which one is missing, still without a request.
        ctx.stores.secrets = store_of(vec![]);
        let outcomes = ctx
            .analysis
            .evaluate(&canary, &spec, router, &ctx.stores)
            .await;
        match &outcomes[0].value {
            Err(MetricError::Failed(why)) => {
                assert!(why.contains("Secret shop/prom-auth not found"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn built_in_metrics_come_from_prometheus_else_from_a_scrapeable_router() {
        let routers = Routers::new("img".into(), 1);
        let canary = |refs: &str| -> Canary {
            serde_yaml::from_str(&format!(
                "metadata: {{name: c, namespace: shop}}\nspec: {{targetRef: {{kind: Deployment, name: app}}, service: {{port: 80{refs}}}, analysis: {{stepWeight: 10}}}}"
            ))
            .unwrap()
        };
        let plain = canary("");
        let sluice_pods = routers
            .for_kind(RouterKind::Sluice)
            .metrics_pods(&plain)
            .unwrap();
        let prom = |a: &str| Some(BuiltinSource::Prometheus(a.into()));
        // (router, spec.metricsServer, --metrics-server, source; None is an error)
        let cases = [
            (
                RouterKind::Istio,
                Some("http://p:9090"),
                None,
                prom("http://p:9090"),
            ),
            (
                RouterKind::Istio,
                None,
                Some("http://c:9090"),
                prom("http://c:9090"),
            ),
            (
                RouterKind::Istio,
                Some("http://p:9090"),
                Some("http://c:9090"),
                prom("http://p:9090"),
            ),
            (RouterKind::Istio, None, None, None),
            // An empty address is no Prometheus.
            (RouterKind::Istio, Some(""), None, None),
            (
                RouterKind::Sluice,
                Some("http://p:9090"),
                None,
                prom("http://p:9090"),
            ),
            (
                RouterKind::Sluice,
                None,
                None,
                Some(BuiltinSource::Scrape(sluice_pods)),
            ),
            (
                RouterKind::Sluice,
                Some(""),
                None,
                Some(BuiltinSource::Scrape(sluice_pods)),
            ),
        ];
        for (kind, spec, default, want) in cases {
            let router = routers.for_kind(kind);
            let got = builtin_source(metrics_server_of(spec, default), router, &plain);
            match want {
                Some(want) => assert_eq!(got.unwrap(), want, "{kind:?} {spec:?} {default:?}"),
                None => {
                    let err = got.unwrap_err().to_string();
                    assert!(err.contains("provider istio need a Prometheus"), "{err}");
                }
            }
        }
        // Gateway API: sluice-router serves a Service parent and is scraped; a Gateway's
        // implementation is not.
        let gateway_api = routers.for_kind(RouterKind::GatewayApiV1);
        let mesh = canary(", gatewayRefs: [{kind: Service, name: app}]");
        assert_eq!(
            builtin_source(None, gateway_api, &mesh).unwrap(),
            BuiltinSource::Scrape(sluice_pods)
        );
        let edge = canary(", gatewayRefs: [{name: public, namespace: edge}]");
        let err = builtin_source(None, gateway_api, &edge).unwrap_err();
        assert!(
            err.to_string().contains("gatewayapi:v1 need a Prometheus"),
            "{err}"
        );
    }
}
