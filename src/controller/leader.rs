//! Leader election on a coordination.k8s.io Lease: one replica acts, the others wait and
//! take over within a lease period after the leader stops renewing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Lease API: {0}")]
    Kube(#[from] kube::Error),
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
}

/// Who holds a lease, as far as the decision to take it is concerned.
#[derive(Debug, PartialEq, Eq)]
enum Holder {
    Me,
    Nobody,
    Expired,
    Other(String),
}

fn holder_of(spec: &LeaseSpec, identity: &str, now: Timestamp) -> Holder {
    match spec.holder_identity.as_deref() {
        None | Some("") => Holder::Nobody,
        Some(h) if h == identity => Holder::Me,
        Some(h) => {
            let duration =
                SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15) as i64);
            match &spec.renew_time {
                Some(renewed) if renewed.0 + duration > now => Holder::Other(h.to_string()),
                _ => Holder::Expired,
            }
        }
    }
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease_duration: Duration) -> Self {
        LeaderElector {
            api,
            name: name.into(),
            identity: identity.into(),
            lease_duration,
        }
    }

    pub fn renew_interval(&self) -> Duration {
        self.lease_duration / 3
    }

    /// Takes or renews the lease; true while this process holds it. Concurrent writers are
    /// serialised by the resourceVersion: the loser gets a conflict and stays follower.
    pub async fn try_acquire(&self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let seconds = self.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        match holder_of(spec, &self.identity, now) {
            Holder::Other(_) => return Ok(false),
            Holder::Me => {}
            Holder::Nobody | Holder::Expired => {
                spec.holder_identity = Some(self.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the lease up so a follower takes over at once.
    pub async fn release(&self) -> Result<(), Error> {
        if let Some(mut lease) = self.api.get_opt(&self.name).await? {
            if let Some(spec) = lease.spec.as_mut() {
                if spec.holder_identity.as_deref() == Some(&self.identity) {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                    self.api
                        .replace(&self.name, &PostParams::default(), &lease)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_holds_the_lease() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let spec = |holder: Option<&str>, renewed_ago: Option<i64>| LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(15),
            renew_time: renewed_ago.map(|s| MicroTime(now - SignedDuration::from_secs(s))),
            ..Default::default()
        };
        let cases = [
            (spec(None, None), Holder::Nobody),
            (spec(Some(""), None), Holder::Nobody),
            (spec(Some("me"), Some(100)), Holder::Me),
            (spec(Some("b"), Some(5)), Holder::Other("b".into())),
            (spec(Some("b"), Some(16)), Holder::Expired),
            (spec(Some("b"), None), Holder::Expired),
        ];
        for (s, want) in cases {
            assert_eq!(holder_of(&s, "me", now), want, "{s:?}");
        }
    }
}
