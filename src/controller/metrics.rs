//! The controller's Prometheus metrics, with Flagger's meanings under the `sluice_` prefix.

use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{Canary, Phase};
use crate::rollout::{self, Plan};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub name: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub workload: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabels {
    pub name: String,
    pub namespace: String,
    pub metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The webhook type, e.g. `confirm-rollout`.
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

pub struct Metrics {
    /// 0 running, 1 successful (or initialized), 2 failed.
    pub status: Family<CanaryLabels, Gauge>,
    pub weight: Family<WorkloadLabels, Gauge>,
    pub metric_analysis: Family<MetricLabels, Gauge<f64, AtomicU64>>,
    pub duration: Family<CanaryLabels, Histogram, fn() -> Histogram>,
    pub total: Family<NamespaceLabels, Gauge>,
    pub successes: Family<CanaryLabels, Counter>,
    pub failures: Family<CanaryLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub api_calls: Counter,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub alerts: Family<ResultLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            status: Family::default(),
            weight: Family::default(),
            metric_analysis: Family::default(),
            duration: Family::new_with_constructor(release_duration_histogram),
            total: Family::default(),
            successes: Family::default(),
            failures: Family::default(),
            reconcile_duration: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            reconcile_errors: Family::default(),
            api_calls: Counter::default(),
            webhooks: Family::default(),
            alerts: Family::default(),
        };
        registry.register(
            "sluice_canary_status",
            "Last known status of a canary: 0 running, 1 successful, 2 failed",
            metrics.status.clone(),
        );
        registry.register(
            "sluice_canary_weight",
            "Traffic weight of the canary in percent",
            metrics.weight.clone(),
        );
        registry.register(
            "sluice_canary_metric_analysis",
            "Last value of each analysis metric",
            metrics.metric_analysis.clone(),
        );
        registry.register(
            "sluice_canary_duration_seconds",
            "Duration of finished canary releases",
            metrics.duration.clone(),
        );
        registry.register(
            "sluice_canary_total",
            "Number of canaries per namespace",
            metrics.total.clone(),
        );
        registry.register(
            "sluice_canary_successes",
            "Releases that were promoted",
            metrics.successes.clone(),
        );
        registry.register(
            "sluice_canary_failures",
            "Releases that were rolled back",
            metrics.failures.clone(),
        );
        registry.register(
            "sluice_reconcile_duration_seconds",
            "Time taken by one reconcile of a canary",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "sluice_reconcile_errors",
            "Reconciles that ended in an error, by error kind",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "sluice_api_writes",
            "Write calls made to the Kubernetes API",
            metrics.api_calls.clone(),
        );
        registry.register(
            "sluice_webhook_calls",
            "Canary webhook calls by type and result",
            metrics.webhooks.clone(),
        );
        registry.register(
            "sluice_alerts",
            "Alerts sent to AlertProviders by result",
            metrics.alerts.clone(),
        );
        metrics
    }

    pub fn webhook_calls(&self, kind: crate::api::WebhookType, ok: bool) {
        let kind = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        self.webhooks
            .get_or_create(&WebhookLabels {
                kind,
                result: if ok { "success" } else { "failure" }.into(),
            })
            .inc();
    }

    pub fn alert_sent(&self, ok: bool) {
        self.alerts
            .get_or_create(&ResultLabels {
                result: if ok { "success" } else { "failure" }.into(),
            })
            .inc();
    }

    /// Observes the reconcile's duration when the returned guard drops, on every exit path.
    pub fn time_reconcile(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            start: Instant::now(),
            histogram: &self.reconcile_duration,
        }
    }

    /// What a plan says about a Canary: its phase, weight and metric values, and the end
    /// of a run with its duration.
    pub fn record(&self, canary: &Canary, plan: &Plan) {
        let name = canary.name_any();
        let namespace = canary.namespace().unwrap_or_default();
        let labels = CanaryLabels {
            name: name.clone(),
            namespace: namespace.clone(),
        };
        let phase = plan.status.phase.unwrap_or_default();
        self.status.get_or_create(&labels).set(phase.status_code());
        self.weight
            .get_or_create(&WorkloadLabels {
                workload: canary.spec.target_ref.name.clone(),
                namespace: namespace.clone(),
            })
            .set(plan.status.canary_weight as i64);
        for result in &plan.status.last_analysis {
            if let Some(value) = result.value {
                self.metric_analysis
                    .get_or_create(&MetricLabels {
                        name: name.clone(),
                        namespace: namespace.clone(),
                        metric: result.name.clone(),
                    })
                    .set(value);
            }
        }
        if let Some(end) =
            rollout::run_ended(canary.status.as_ref(), &plan.status, Timestamp::now())
        {
            let counter = if end.phase == Phase::Succeeded {
                &self.successes
            } else {
                &self.failures
            };
            counter.get_or_create(&labels).inc();
            if let Some(took) = end.took {
                self.duration
                    .get_or_create(&labels)
                    .observe(took.as_secs_f64());
            }
        }
    }
}

fn release_duration_histogram() -> Histogram {
    Histogram::new([
        10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0, 7200.0,
    ])
}

pub struct ReconcileTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
