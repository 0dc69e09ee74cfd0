//! The `Canary` resource: field-compatible with Flagger's `flagger.app/v1beta1` Canary,
//! served as `sluice.dev/v1beta1`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::gateway::{HttpRequestMirrorFilter, ParentReference};
use super::istio::{Headers, HttpMatchRequest, HttpRetry, HttpRewrite, TrafficPolicy};

pub const DEFAULT_INTERVAL: &str = "60s";
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;

// Several printcolumns share a type, which clippy mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.provider) || self.provider != 'gatewayapi:v1' || (has(self.service.gatewayRefs) && size(self.service.gatewayRefs) > 0)").message("spec.service.gatewayRefs must name at least one Gateway or Service with provider gatewayapi:v1"))]
#[kube(
    group = "sluice.dev",
    version = "v1beta1",
    kind = "Canary",
    namespaced,
    status = "CanaryStatus",
    shortname = "canary",
    doc = "A progressive release of a Deployment: traffic is shifted to the new version step by step while its metrics are checked, then it is promoted or rolled back.",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Weight", type_ = "string", json_path = ".status.canaryWeight"),
    printcolumn(
        name = "Suspended",
        type_ = "boolean",
        json_path = ".spec.suspend",
        priority = "1"
    ),
    printcolumn(
        name = "FailedChecks",
        type_ = "string",
        json_path = ".status.failedChecks",
        priority = "1"
    ),
    printcolumn(
        name = "Interval",
        type_ = "string",
        json_path = ".spec.analysis.interval",
        priority = "1"
    ),
    printcolumn(
        name = "Mirror",
        type_ = "boolean",
        json_path = ".spec.analysis.mirror",
        priority = "1"
    ),
    printcolumn(
        name = "StepWeight",
        type_ = "string",
        json_path = ".spec.analysis.stepWeight",
        priority = "1"
    ),
    printcolumn(
        name = "StepWeights",
        type_ = "string",
        json_path = ".spec.analysis.stepWeights",
        priority = "1"
    ),
    printcolumn(
        name = "MaxWeight",
        type_ = "string",
        json_path = ".spec.analysis.maxWeight",
        priority = "1"
    ),
    printcolumn(
        name = "LastTransitionTime",
        type_ = "string",
        json_path = ".status.lastTransitionTime"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// The Deployment to release.
    pub target_ref: TargetRef,
    /// A HorizontalPodAutoscaler (autoscaling/v2) scaling the target; a copy is made for the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler_ref: Option<AutoscalerRef>,
    /// Traffic router: `istio` (VirtualService/DestinationRule enforced by Istio),
    /// `sluice` (the same objects, enforced by sluice-proxy) or `gatewayapi:v1` (an
    /// HTTPRoute enforced by a Gateway API implementation). Defaults to the controller's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<RouterKind>,
    /// Prometheus address for built-in metrics; overrides the controller's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_server: Option<String>,
    /// Seconds a rollout may wait for readiness before it is rolled back (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i32>,
    /// Promote without analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_analysis: Option<bool>,
    /// Pause the release loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// On deletion of the Canary, give the target back its replicas and traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_on_deletion: Option<bool>,
    pub service: CanaryService,
    pub analysis: CanaryAnalysis,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[schemars(extend("enum" = ["Deployment"]))]
    pub kind: String,
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[schemars(extend("enum" = ["HorizontalPodAutoscaler"]))]
    pub kind: String,
    #[schemars(length(min = 1))]
    pub name: String,
}

/// The traffic routers sluice can drive. A closed set: an unknown value is rejected by the schema.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum RouterKind {
    #[default]
    Istio,
    Sluice,
    #[serde(rename = "gatewayapi:v1")]
    GatewayApiV1,
}

impl RouterKind {
    pub const ALL: [RouterKind; 3] = [
        RouterKind::Istio,
        RouterKind::Sluice,
        RouterKind::GatewayApiV1,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouterKind::Istio => "istio",
            RouterKind::Sluice => "sluice",
            RouterKind::GatewayApiV1 => "gatewayapi:v1",
        }
    }
}

impl std::str::FromStr for RouterKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        RouterKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = RouterKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown provider {name:?} (one of: {})", known.join(", "))
            })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CanaryService {
    /// Name of the apex Service (default: the target's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Name of the Service port (default `http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// Container port (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_discovery: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Istio gateways the VirtualService binds to (default `[mesh]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Extra VirtualService hosts; the apex name is always added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Copied into both DestinationRules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Timeout of the whole request, a Go duration (e.g. `2s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Timeout of each request to a backend (Gateway API only); at most `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_timeout: Option<String>,
    /// Gateways (or, for mesh routing, Services) the HTTPRoute attaches to; required
    /// with provider `gatewayapi:v1`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_refs: Vec<ParentReference>,
    /// Further Services that get a copy of the requests (Gateway API only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror: Vec<HttpRequestMirrorFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_fields")]
    pub cors_policy: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<ServiceRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apex: Option<CustomMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<CustomMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CustomMetadata>,
}

/// `service.rewrite`: Istio's rewrite, and how the Gateway API replaces the path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRewrite {
    /// The new path, or the new prefix in place of the matched one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The new Host (authority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Gateway API only: `ReplaceFullPath` (default, as Flagger) or `ReplacePrefixMatch`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["ReplaceFullPath", "ReplacePrefixMatch"]))]
    pub rewrite_type: Option<String>,
}

impl ServiceRewrite {
    /// The rewrite as Istio writes it: the path type is Istio's own (prefix when the
    /// route matched on a prefix).
    pub fn istio(&self) -> HttpRewrite {
        HttpRewrite {
            uri: self.uri.clone(),
            authority: self.authority.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CustomMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.stepWeight) || !has(self.maxWeight) || self.stepWeight <= self.maxWeight").message("analysis.stepWeight must not exceed analysis.maxWeight"))]
#[x_kube(validation = Rule::new("!has(self.stepWeights) || self.stepWeights.all(w, !has(self.maxWeight) || w <= self.maxWeight)").message("every analysis.stepWeights entry must not exceed analysis.maxWeight"))]
pub struct CanaryAnalysis {
    /// Time between steps, e.g. `45s` or `1m` (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(m|s)$"))]
    pub interval: Option<String>,
    /// Failed checks before rollback (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub threshold: Option<i32>,
    /// Highest canary weight before promotion (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_weight: Option<i32>,
    /// Weight added at each step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub step_weight: Option<i32>,
    /// Explicit weights for each step, ascending; replaces stepWeight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 0, max = 100)), length(max = 100))]
    pub step_weights: Vec<i32>,
    /// Weight moved back to the primary at each promotion step (default: all at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub step_weight_promotion: Option<i32>,
    /// Number of checks for A/B testing and Blue/Green.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub iterations: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub mirror_weight: Option<i32>,
    /// Requests these conditions select are routed by the analysis (A/B testing).
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    /// Percent of primary replicas that must be ready (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub primary_ready_threshold: Option<i32>,
    /// Percent of canary replicas that must be ready (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub canary_ready_threshold: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<CanaryMetric>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<CanaryWebhook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<CanaryAlert>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CanaryMetric {
    /// A built-in (`request-success-rate`, `request-duration`) or a name for a templated query.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Query window, e.g. `1m` (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: Option<String>,
    /// Deprecated in Flagger: the minimum (success rate) or maximum (duration) value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_range: Option<ThresholdRange>,
    /// Deprecated in Flagger: an inline Prometheus query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<CrossNamespaceRef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub template_variables: BTreeMap<String, String>,
    /// What a query without values means (default `fail`, as Flagger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_no_data: Option<NoDataPolicy>,
}

/// What "no values found" means for a metric: no traffic reached the canary.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoDataPolicy {
    /// A failed check (Flagger's behaviour).
    #[default]
    Fail,
    /// The metric passes; the other metrics decide.
    Skip,
    /// The step waits for data without counting a failure, until progressDeadlineSeconds.
    Hold,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CrossNamespaceRef {
    #[schemars(length(min = 1))]
    pub name: String,
    /// Defaults to the Canary's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookType {
    ConfirmRollout,
    PreRollout,
    #[default]
    Rollout,
    ConfirmTrafficIncrease,
    ConfirmPromotion,
    PostRollout,
    Rollback,
    Event,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CanaryWebhook {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub webhook_type: Option<WebhookType>,
    #[schemars(length(min = 1))]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mute_alert: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub retries: Option<i32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum AlertSeverity {
    #[default]
    Info,
    Warn,
    Error,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAlert {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<AlertSeverity>,
    pub provider_ref: CrossNamespaceRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    /// Cookie that pins a client to the canary.
    #[schemars(length(min = 1))]
    pub cookie_name: String,
    /// Cookie that pins a client to the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_cookie_name: Option<String>,
    /// Cookie lifetime in seconds (default 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_age: Option<i32>,
}

/// Phases of a release, as Flagger names them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum Phase {
    #[default]
    Initializing,
    Initialized,
    Waiting,
    Progressing,
    WaitingPromotion,
    Promoting,
    Finalising,
    Succeeded,
    Failed,
    Terminating,
    Terminated,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initializing => "Initializing",
            Phase::Initialized => "Initialized",
            Phase::Waiting => "Waiting",
            Phase::Progressing => "Progressing",
            Phase::WaitingPromotion => "WaitingPromotion",
            Phase::Promoting => "Promoting",
            Phase::Finalising => "Finalising",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Terminating => "Terminating",
            Phase::Terminated => "Terminated",
        }
    }

    /// Value of the `sluice_canary_status` gauge: 0 running, 1 successful, 2 failed (Flagger's encoding).
    pub fn status_code(self) -> i64 {
        match self {
            Phase::Initialized | Phase::Succeeded => 1,
            Phase::Failed => 2,
            _ => 0,
        }
    }

    /// A release is under way: traffic may reach the canary.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting | Phase::Finalising
        )
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub failed_checks: i32,
    #[serde(default)]
    pub canary_weight: i32,
    #[serde(default)]
    pub iterations: i32,
    /// Hashes of the ConfigMaps and Secrets the target uses, by `kind/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tracked_configs: BTreeMap<String, String>,
    /// Hash of the pod template (and tracked configs) of the revision last analysed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_spec: Option<String>,
    /// Hash of the revision the primary runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_promoted_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// When the release loop last took a step (advance, check or wait); steps are
    /// `analysis.interval` apart however often the Canary is reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step_time: Option<Time>,
    /// Replicas the target had before sluice scaled it down, restored on revertOnDeletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_replicas: Option<i32>,
    /// Outcome of the last analysis, one entry per metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_analysis: Vec<MetricResult>,
    /// The canary receives a mirrored copy of the traffic (the step before shifting).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirrored: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<CanaryCondition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub passed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CanaryCondition {
    /// `Promoted` (release outcome) or `Ready` (spec valid and objects in place).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Canary {
    /// Name of the apex Service and VirtualService.
    pub fn service_name(&self) -> &str {
        self.spec
            .service
            .name
            .as_deref()
            .unwrap_or(&self.spec.target_ref.name)
    }

    pub fn phase(&self) -> Option<Phase> {
        self.status.as_ref().and_then(|s| s.phase)
    }
}
