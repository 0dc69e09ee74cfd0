//! Runs a Canary's metric checks: picks the provider for each check (the Canary's or the
//! controller's Prometheus, a MetricTemplate's provider, or the built-in scrape of the
//! sluice routers), renders the query and turns the answer into a [`MetricOutcome`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;

use crate::analysis::{
    self, BuiltinQuery, MetricQuery, MetricsProvider, PrometheusAuth, PrometheusConfig,
    PrometheusProvider, ScrapeConfig, ScrapeProvider, TemplateVars,
};
use crate::api::{Canary, MetricTemplate};
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

pub struct Analysis {
    client: Client,
    default_metrics_server: Option<String>,
    scrape: Arc<ScrapeProvider>,
    /// Providers without credentials, by address, so the HTTP client is reused.
    prometheus: Mutex<HashMap<String, Arc<PrometheusProvider>>>,
}

impl Analysis {
    pub fn new(
        client: Client,
        default_metrics_server: Option<String>,
    ) -> Result<Self, analysis::Error> {
        Ok(Analysis {
            client,
            default_metrics_server,
            scrape: Arc::new(ScrapeProvider::new(ScrapeConfig::default())?),
            prometheus: Mutex::default(),
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
    pub async fn sample(&self, canary: &Canary, router: &dyn TrafficRouter) {
        let Ok(BuiltinSource::Scrape(pods)) =
            builtin_source(self.metrics_server(canary), router, canary)
        else {
            return;
        };
        match self.metrics_urls(canary, pods).await {
            Ok(urls) => {
                let report = self.scrape.sample(&urls).await;
                for (url, err) in report.failed {
                    tracing::debug!(%url, error = %err, "router metrics sample failed");
                }
            }
            Err(err) => tracing::warn!(error = %err, "listing router pods"),
        }
    }

    pub async fn evaluate(
        &self,
        canary: &Canary,
        spec: &ReleaseSpec,
        router: &dyn TrafficRouter,
    ) -> Vec<MetricOutcome> {
        let mut outcomes = Vec::with_capacity(spec.metrics.len());
        for check in &spec.metrics {
            let value = self
                .run(canary, check, spec.interval, router)
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
                let api: Api<MetricTemplate> = Api::namespaced(self.client.clone(), &template_ns);
                let template = api
                    .get_opt(name)
                    .await
                    .map_err(|e| analysis::Error::BadConfig {
                        reason: format!("reading MetricTemplate {template_ns}/{name}: {e}"),
                    })?
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
                    Some(secret) => Some(self.auth_from_secret(&template_ns, &secret.name).await?),
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
                    Arc::new(PrometheusProvider::new(config)?)
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

    /// Basic auth from `username`/`password`, or a bearer `token`.
    async fn auth_from_secret(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<PrometheusAuth, analysis::Error> {
        let bad = |reason: String| analysis::Error::BadConfig { reason };
        let secret = Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| bad(format!("reading Secret {ns}/{name}: {e}")))?
            .ok_or_else(|| bad(format!("Secret {ns}/{name} not found")))?;
        let data = secret.data.unwrap_or_default();
        let field = |k: &str| {
            data.get(k)
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

    async fn metrics_urls(
        &self,
        canary: &Canary,
        wanted: MetricsPods,
    ) -> Result<Vec<String>, kube::Error> {
        let ns = canary.namespace().unwrap_or_default();
        let pods = Api::<Pod>::namespaced(self.client.clone(), &ns)
            .list(&ListParams::default().labels(wanted.selector))
            .await?;
        Ok(pods
            .items
            .iter()
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                let port = p
                    .annotations()
                    .get("prometheus.io/port")
                    .and_then(|v| v.parse::<u16>().ok())
                    .unwrap_or(wanted.port);
                Some(format!("http://{ip}:{port}/metrics"))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RouterKind;
    use crate::router::Routers;

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
