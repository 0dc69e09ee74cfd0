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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::mock_api::mock_client;

    #[tokio::test]
    async fn an_event_is_created_per_decision_with_its_own_name_and_a_bounded_note() {
        let (client, seen) = mock_client(|req| (201, req.body.clone()));
        let publisher = EventPublisher::new(client, "sluice-controller-0".into());
        let regarding = ObjectReference {
            api_version: Some("sluice.dev/v1beta1".into()),
            kind: Some("Canary".into()),
            name: Some("web".into()),
            namespace: Some("shop".into()),
            ..Default::default()
        };
        // (type, message, note written)
        let long = "é".repeat(600); // 1,200 bytes: cut at a character boundary
        let cases = [
            (
                EventType::Normal,
                "Advance web.shop canary weight 10".to_string(),
                "Advance web.shop canary weight 10".to_string(),
            ),
            (EventType::Warning, long.clone(), "é".repeat(512)),
        ];
        for (type_, message, note) in &cases {
            let event = rollout::Event {
                type_: *type_,
                reason: "Synced",
                message: message.clone(),
                alert: None,
            };
            publisher.publish(&regarding, &event).await.unwrap();
            let seen = seen.lock().unwrap();
            let req = seen.last().unwrap();
            assert_eq!(
                (req.method.as_str(), req.path.as_str()),
                ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events")
            );
            let body = &req.body;
            assert_eq!(
                body["type"],
                if *type_ == EventType::Normal {
                    "Normal"
                } else {
                    "Warning"
                }
            );
            assert_eq!(body["reason"], "Synced");
            assert_eq!(body["note"], note.as_str());
            assert_eq!(body["regarding"]["name"], "web");
            assert_eq!(body["reportingController"], REPORTING_CONTROLLER);
            assert_eq!(body["reportingInstance"], "sluice-controller-0");
            assert!(body["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("web."));
            assert!(body["eventTime"].is_string());
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_ne!(
            seen[0].body["metadata"]["name"], seen[1].body["metadata"]["name"],
            "one event per decision, never folded into a series"
        );
    }
}
