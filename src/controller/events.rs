//! Events on the Canary, one per decision, so that `kubectl describe canary` lists every
//! step with its own message. (kube's Recorder folds events that share a reason into one
//! series, which would hide "Advance ... weight 20" behind "weight 10".)

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::rollout::{self, EventType};

pub const REPORTING_CONTROLLER: &str = "sluice.dev/controller";

pub struct EventPublisher {
    client: Client,
    instance: String,
}

impl EventPublisher {
    pub fn new(client: Client, instance: String) -> Self {
        EventPublisher { client, instance }
    }

    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        event: &rollout::Event,
    ) -> Result<(), kube::Error> {
        let ns = regarding.namespace.clone().unwrap_or_default();
        let now = Timestamp::now();
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or("canary"),
            now.as_nanosecond()
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(event.reason.into()),
            note: Some(truncate(&event.message, 1024)),
            action: Some("Reconcile".into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(truncate(&self.instance, 128)),
            ..Default::default()
        };
        Api::<Event>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), &ev)
            .await
            .map(|_| ())
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
