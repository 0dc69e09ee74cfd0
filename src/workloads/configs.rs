//! ConfigMaps and Secrets the target's pods use. Their content is part of the revision (a
//! changed ConfigMap is a new release), and the primary runs on `-primary` copies so that
//! the canary's configuration can change without touching the primary.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::ByteString;

use super::owned_meta;
use crate::api::Canary;

/// Opting a config out of tracking, with Flagger's annotation or ours.
pub const TRACKING_ANNOTATIONS: [&str; 2] =
    ["sluice.dev/config-tracking", "flagger.app/config-tracking"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigKind {
    ConfigMap,
    Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigRef {
    pub kind: ConfigKind,
    pub name: String,
}

impl ConfigRef {
    /// Key in `status.trackedConfigs`.
    pub fn key(&self) -> String {
        match self.kind {
            ConfigKind::ConfigMap => format!("ConfigMap/{}", self.name),
            ConfigKind::Secret => format!("Secret/{}", self.name),
        }
    }
}

fn primary(name: &str) -> String {
    format!("{name}-primary")
}

/// Every ConfigMap and Secret the pod template refers to: env, envFrom and volumes.
pub fn referenced(template: &PodTemplateSpec) -> BTreeSet<ConfigRef> {
    let mut refs = BTreeSet::new();
    let mut add = |kind, name: &str| {
        refs.insert(ConfigRef {
            kind,
            name: name.to_string(),
        });
    };
    let Some(spec) = &template.spec else {
        return BTreeSet::new();
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for env in c.env.iter().flatten() {
            if let Some(from) = &env.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    add(ConfigKind::ConfigMap, &r.name);
                }
                if let Some(r) = &from.secret_key_ref {
                    add(ConfigKind::Secret, &r.name);
                }
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                add(ConfigKind::ConfigMap, &r.name);
            }
            if let Some(r) = &from.secret_ref {
                add(ConfigKind::Secret, &r.name);
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            add(ConfigKind::ConfigMap, &cm.name);
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
            add(ConfigKind::Secret, s);
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                add(ConfigKind::ConfigMap, &cm.name);
            }
            if let Some(s) = &source.secret {
                add(ConfigKind::Secret, &s.name);
            }
        }
    }
    refs
}

/// Rewrites the template's references to the tracked configs to their `-primary` copies.
pub fn point_at_primary_copies(template: &mut PodTemplateSpec, tracked: &BTreeSet<ConfigRef>) {
    let is_tracked = |kind, name: &str| {
        tracked.contains(&ConfigRef {
            kind,
            name: name.to_string(),
        })
    };
    let Some(spec) = template.spec.as_mut() else {
        return;
    };
    rewrite_pod(spec, &is_tracked);
}

fn rewrite_pod(spec: &mut PodSpec, is_tracked: &dyn Fn(ConfigKind, &str) -> bool) {
    let rename = |kind, name: &mut String| {
        if is_tracked(kind, name) {
            *name = primary(name);
        }
    };
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        for env in c.env.iter_mut().flatten() {
            if let Some(from) = env.value_from.as_mut() {
                if let Some(r) = from.config_map_key_ref.as_mut() {
                    rename(ConfigKind::ConfigMap, &mut r.name);
                }
                if let Some(r) = from.secret_key_ref.as_mut() {
                    rename(ConfigKind::Secret, &mut r.name);
                }
            }
        }
        for from in c.env_from.iter_mut().flatten() {
            if let Some(r) = from.config_map_ref.as_mut() {
                rename(ConfigKind::ConfigMap, &mut r.name);
            }
            if let Some(r) = from.secret_ref.as_mut() {
                rename(ConfigKind::Secret, &mut r.name);
            }
        }
    }
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(cm) = v.config_map.as_mut() {
            rename(ConfigKind::ConfigMap, &mut cm.name);
        }
        if let Some(name) = v.secret.as_mut().and_then(|s| s.secret_name.as_mut()) {
            rename(ConfigKind::Secret, name);
        }
        for source in v
            .projected
            .iter_mut()
            .flat_map(|p| p.sources.iter_mut().flatten())
        {
            if let Some(cm) = source.config_map.as_mut() {
                rename(ConfigKind::ConfigMap, &mut cm.name);
            }
            if let Some(s) = source.secret.as_mut() {
                rename(ConfigKind::Secret, &mut s.name);
            }
        }
    }
}

/// True unless the config opts out of tracking.
pub fn is_trackable(annotations: Option<&BTreeMap<String, String>>) -> bool {
    !TRACKING_ANNOTATIONS.iter().any(|key| {
        annotations
            .and_then(|a| a.get(*key))
            .is_some_and(|v| v == "disabled")
    })
}

fn hash_entries<'a>(entries: impl Iterator<Item = (&'a String, &'a [u8])>) -> String {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    for (k, v) in entries {
        h.write(k.as_bytes());
        h.write_u8(0);
        h.write(v);
        h.write_u8(0);
    }
    format!("{:016x}", h.finish())
}

pub fn config_map_hash(cm: &ConfigMap) -> String {
    let data = cm.data.iter().flatten().map(|(k, v)| (k, v.as_bytes()));
    let binary = cm
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.0.as_slice()));
    hash_entries(data.chain(binary))
}

pub fn secret_hash(secret: &Secret) -> String {
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.0.as_slice()));
    let strings = secret
        .string_data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.as_bytes()));
    hash_entries(data.chain(strings))
}

pub fn primary_config_map(canary: &Canary, source: &ConfigMap) -> ConfigMap {
    let name = primary(source.metadata.name.as_deref().unwrap_or_default());
    ConfigMap {
        metadata: owned_meta(canary, name, None),
        data: source.data.clone(),
        binary_data: source.binary_data.clone(),
        immutable: None,
    }
}

pub fn primary_secret(canary: &Canary, source: &Secret) -> Secret {
    let name = primary(source.metadata.name.as_deref().unwrap_or_default());
    let mut data: BTreeMap<String, ByteString> = source.data.clone().unwrap_or_default();
    for (k, v) in source.string_data.iter().flatten() {
        data.insert(k.clone(), ByteString(v.as_bytes().to_vec()));
    }
    Secret {
        metadata: owned_meta(canary, name, None),
        data: Some(data),
        type_: source.type_.clone(),
        string_data: None,
        immutable: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> PodTemplateSpec {
        serde_yaml::from_str(
            r#"
spec:
  containers:
  - name: app
    env:
    - {name: A, valueFrom: {configMapKeyRef: {name: settings, key: a}}}
    - {name: B, valueFrom: {secretKeyRef: {name: creds, key: b}}}
    envFrom: [{configMapRef: {name: env-cm}}]
  volumes:
  - {name: v1, configMap: {name: files}}
  - {name: v2, secret: {secretName: certs}}
  - name: v3
    projected: {sources: [{configMap: {name: proj-cm}}, {secret: {name: proj-secret}}]}
"#,
        )
        .unwrap()
    }

    #[test]
    fn finds_every_reference() {
        let keys: Vec<String> = referenced(&template()).iter().map(ConfigRef::key).collect();
        assert_eq!(
            keys,
            vec![
                "ConfigMap/env-cm",
                "ConfigMap/files",
                "ConfigMap/proj-cm",
                "ConfigMap/settings",
                "Secret/certs",
                "Secret/creds",
                "Secret/proj-secret"
            ]
        );
    }

    #[test]
    fn rewrites_only_tracked_references() {
        let mut t = template();
        let tracked: BTreeSet<ConfigRef> = referenced(&t)
            .into_iter()
            .filter(|r| r.name != "files")
            .collect();
        point_at_primary_copies(&mut t, &tracked);
        let after: Vec<String> = referenced(&t).iter().map(ConfigRef::key).collect();
        assert!(after.contains(&"ConfigMap/settings-primary".to_string()));
        assert!(after.contains(&"Secret/proj-secret-primary".to_string()));
        assert!(
            after.contains(&"ConfigMap/files".to_string()),
            "untracked stays: {after:?}"
        );
    }

    #[test]
    fn hash_follows_content_and_opt_out_is_honoured() {
        let mut cm = ConfigMap {
            data: Some(BTreeMap::from([("k".to_string(), "v1".to_string())])),
            ..Default::default()
        };
        let h1 = config_map_hash(&cm);
        cm.data = Some(BTreeMap::from([("k".to_string(), "v2".to_string())]));
        assert_ne!(h1, config_map_hash(&cm));
        let off = BTreeMap::from([(
            "flagger.app/config-tracking".to_string(),
            "disabled".to_string(),
        )]);
        assert!(!is_trackable(Some(&off)));
        assert!(is_trackable(None));
    }
}
