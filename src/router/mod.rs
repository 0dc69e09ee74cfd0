//! Traffic routers: how a Canary's weights become objects in the cluster. Each router is
//! pure rendering; the controller applies what it renders with server-side apply.
//! A new router (e.g. Gateway API) is one new file implementing [`TrafficRouter`].

pub mod istio;
pub mod sluice;

use std::collections::BTreeMap;

use kube::api::DynamicObject;

use crate::api::{Canary, RouterKind};
use crate::controller::workloads::AppLabel;
use crate::rollout::Routes;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rendering {kind} {name}: {source}")]
    Render {
        kind: &'static str,
        name: String,
        source: serde_json::Error,
    },
}

/// Renders the routing objects of one router kind.
pub trait TrafficRouter: Send + Sync {
    fn kind(&self) -> RouterKind;

    /// Labels the apex Service selects: the primary pods, or a proxy in front of them.
    fn apex_selector(&self, canary: &Canary, app: &AppLabel) -> BTreeMap<String, String>;

    /// Port the apex Service targets when it is not the app's (a proxy's port).
    fn apex_target_port(
        &self,
        _canary: &Canary,
    ) -> Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString> {
        None
    }

    /// The Deployment (in the Canary's namespace) that serves the apex Service when it is
    /// not the app: the apex is pointed at it only once it is available.
    fn apex_backend(&self, _canary: &Canary) -> Option<&'static str> {
        None
    }

    /// Objects that do not change with the weights (e.g. DestinationRules).
    fn static_objects(&self, canary: &Canary) -> Result<Vec<DynamicObject>, Error>;

    /// Objects that carry the weights, mirroring and session cookies (e.g. the VirtualService).
    fn route_objects(&self, canary: &Canary, routes: Routes) -> Result<Vec<DynamicObject>, Error>;
}

/// The routers a controller drives, one per provider.
pub struct Routers {
    pub istio: istio::IstioRouter,
    pub sluice: sluice::SluiceRouter,
}

impl Routers {
    pub fn new(proxy_image: String, router_replicas: i32) -> Self {
        Routers {
            istio: istio::IstioRouter,
            sluice: sluice::SluiceRouter {
                image: proxy_image,
                replicas: router_replicas,
            },
        }
    }

    pub fn for_kind(&self, kind: RouterKind) -> &dyn TrafficRouter {
        match kind {
            RouterKind::Istio => &self.istio,
            RouterKind::Sluice => &self.sluice,
        }
    }
}

/// Converts a typed object into the dynamic form the executor applies.
pub(crate) fn to_dynamic<T: serde::Serialize>(
    kind: &'static str,
    name: &str,
    object: &T,
) -> Result<DynamicObject, Error> {
    serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map_err(|source| Error::Render {
            kind,
            name: name.to_string(),
            source,
        })
}
