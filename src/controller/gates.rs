//! The IO behind the decision's gates and notifications: Canary webhooks (gates, checks,
//! post-rollout and event hooks) and alerts to the Canary's AlertProviders.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::context::Context;
use crate::api::{AlertProvider, Canary, WebhookType};
use crate::hooks::{self, Payload};
use crate::notify::{self, Alert};
use crate::rollout::{Event, EventType, GateResult, Plan};

const ALERT_TIMEOUT: Duration = Duration::from_secs(10);

/// The payload every hook of this Canary receives.
fn payload(canary: &Canary, phase: &str, checksum: &str) -> Payload {
    Payload {
        name: canary.name_any(),
        namespace: canary.namespace().unwrap_or_default(),
        phase: phase.to_string(),
        checksum: checksum.to_string(),
        metadata: Default::default(),
    }
}

fn phase_of(canary: &Canary) -> &'static str {
    canary.phase().unwrap_or_default().as_str()
}

/// Calls the webhooks of one type; the error names the hook and what it answered.
pub async fn call(ctx: &Context, canary: &Canary, kind: WebhookType, checksum: &str) -> GateResult {
    let body = payload(canary, phase_of(canary), checksum);
    let result = hooks::call_all(&ctx.http, &canary.spec.analysis.webhooks, kind, &body).await;
    ctx.metrics.webhook_calls(kind, result.is_ok());
    result.map_err(|err| err.to_string())
}

/// After the plan is applied: post-rollout hooks, event hooks and alerts. Failures here
/// are logged and never stop the release.
pub async fn notify(ctx: &Context, canary: &Canary, plan: &Plan) {
    let phase = plan.status.phase.unwrap_or_default().as_str();
    let checksum = plan.status.last_applied_spec.clone().unwrap_or_default();
    let webhooks = &canary.spec.analysis.webhooks;
    if plan.post_rollout
        && hooks::of_type(webhooks, WebhookType::PostRollout)
            .next()
            .is_some()
    {
        let body = payload(canary, phase, &checksum);
        let result = hooks::call_all(&ctx.http, webhooks, WebhookType::PostRollout, &body).await;
        ctx.metrics
            .webhook_calls(WebhookType::PostRollout, result.is_ok());
        if let Err(err) = result {
            tracing::warn!(canary = %canary.name_any(), error = %err, "post-rollout webhook failed");
        }
    }
    if hooks::of_type(webhooks, WebhookType::Event)
        .next()
        .is_some()
    {
        for event in &plan.events {
            let body = hooks::event_payload(
                payload(canary, phase, &checksum),
                event_type(event),
                &event.message,
                chrono::Utc::now(),
            );
            let result = hooks::call_all(&ctx.http, webhooks, WebhookType::Event, &body).await;
            ctx.metrics
                .webhook_calls(WebhookType::Event, result.is_ok());
            if let Err(err) = result {
                tracing::warn!(canary = %canary.name_any(), error = %err, "event webhook failed");
            }
        }
    }
    for event in &plan.events {
        if let Some(severity) = event.alert {
            send_alerts(ctx, canary, plan, event, severity).await;
        }
    }
}

fn event_type(event: &Event) -> &'static str {
    match event.type_ {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

async fn send_alerts(
    ctx: &Context,
    canary: &Canary,
    plan: &Plan,
    event: &Event,
    severity: crate::api::AlertSeverity,
) {
    let ns = canary.namespace().unwrap_or_default();
    for alert in &canary.spec.analysis.alerts {
        if !notify::wanted(alert.severity.unwrap_or_default(), severity) {
            continue;
        }
        let provider_ns = alert.provider_ref.namespace.clone().unwrap_or(ns.clone());
        let result = async {
            let provider = Api::<AlertProvider>::namespaced(ctx.client.clone(), &provider_ns)
                .get(&alert.provider_ref.name)
                .await
                .map_err(|e| {
                    format!(
                        "AlertProvider {provider_ns}/{}: {e}",
                        alert.provider_ref.name
                    )
                })?;
            let spec = &provider.spec;
            let address = match (&spec.address, &spec.secret_ref) {
                (Some(address), _) if !address.is_empty() => address.clone(),
                (_, Some(secret_ref)) => {
                    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &provider_ns)
                        .get(&secret_ref.name)
                        .await
                        .map_err(|e| format!("Secret {provider_ns}/{}: {e}", secret_ref.name))?;
                    notify::address_from_secret(&secret.data.unwrap_or_default())
                        .map_err(|e| e.to_string())?
                }
                _ => {
                    return Err(format!(
                        "AlertProvider {provider_ns}/{} has neither address nor secretRef",
                        alert.provider_ref.name
                    ))
                }
            };
            let body = notify::render(
                spec.type_,
                spec.channel.as_deref(),
                spec.username.as_deref(),
                &Alert {
                    canary: format!("{}.{ns}", canary.name_any()),
                    phase: plan.status.phase.unwrap_or_default().as_str().to_string(),
                    severity,
                    message: event.message.clone(),
                    fields: vec![
                        (
                            "Target".to_string(),
                            format!("Deployment/{}.{ns}", canary.spec.target_ref.name),
                        ),
                        (
                            "Failed checks threshold".to_string(),
                            canary.spec.analysis.threshold.unwrap_or(1).to_string(),
                        ),
                        (
                            "Traffic".to_string(),
                            format!("{}%", plan.status.canary_weight),
                        ),
                    ],
                },
            );
            let url = notify::endpoint(spec.type_, &address);
            notify::send(&ctx.http, &url, &body, ALERT_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        ctx.metrics.alert_sent(result.is_ok());
        if let Err(err) = result {
            tracing::warn!(canary = %canary.name_any(), alert = %alert.name, error = %err, "alert not sent");
        }
    }
}
