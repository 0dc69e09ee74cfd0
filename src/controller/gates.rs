//! The IO behind the decision's gates and notifications: Canary webhooks (gates, checks,
//! post-rollout and event hooks) and alerts to the Canary's AlertProviders.

use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use super::context::Context;
use crate::api::{Canary, WebhookType};
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
            let provider = ctx
                .stores
                .alert_providers
                .get(&ObjectRef::new(&alert.provider_ref.name).within(&provider_ns))
                .ok_or_else(|| {
                    format!(
                        "AlertProvider {provider_ns}/{} not found",
                        alert.provider_ref.name
                    )
                })?;
            let spec = &provider.spec;
            let address = match (&spec.address, &spec.secret_ref) {
                (Some(address), _) if !address.is_empty() => address.clone(),
                (_, Some(secret_ref)) => {
                    let secret = ctx
                        .stores
                        .secrets
                        .get(&ObjectRef::new(&secret_ref.name).within(&provider_ns))
                        .ok_or_else(|| {
                            format!("Secret {provider_ns}/{} not found", secret_ref.name)
                        })?;
                    let data = secret.data.clone().unwrap_or_default();
                    notify::address_from_secret(&data).map_err(|e| e.to_string())?
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
