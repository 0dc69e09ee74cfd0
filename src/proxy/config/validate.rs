//! Judging objects one by one: what rejects them (checks Kubernetes mode runs per object
//! so that one bad object is skipped, not the whole update) and what is accepted with a
//! warning because sluice-proxy does not enforce it.

use std::collections::BTreeSet;

use super::file::{object_name, ConfigFile, Object, ObjectMeta};
use super::policy::{effective_policy, merge_policy};
use super::virtual_host::build_virtual_host;
use super::{invalid, Error};
use crate::api::istio::{DestinationRuleSpec, VirtualServiceSpec};

/// What `build` would reject this VirtualService for, judged on its own (cross-object
/// checks do not exist for VirtualServices). Kubernetes mode uses it to skip only the
/// invalid object instead of the whole update.
pub fn check_virtual_service(
    vs: &Object<VirtualServiceSpec>,
    default_ns: &str,
) -> Result<(), Error> {
    let object = object_name("VirtualService", &vs.metadata, default_ns);
    require_name(&object, &vs.metadata)?;
    let ns = vs.metadata.namespace.as_deref().unwrap_or(default_ns);
    // The default retry codes do not change whether the object is valid.
    build_virtual_host(&object, ns, &vs.spec, &mut BTreeSet::new(), false).map(|_| ())
}

/// Like `check_virtual_service`, for a DestinationRule.
pub fn check_destination_rule(
    rule: &Object<DestinationRuleSpec>,
    default_ns: &str,
) -> Result<(), Error> {
    let object = object_name("DestinationRule", &rule.metadata, default_ns);
    require_name(&object, &rule.metadata)?;
    validate_destination_rule(&object, &rule.spec)
}

pub(super) fn require_name(object: &str, meta: &ObjectMeta) -> Result<(), Error> {
    if meta.name.trim().is_empty() {
        return Err(invalid(object, "metadata.name", "must not be empty"));
    }
    Ok(())
}

pub(super) fn validate_destination_rule(
    object: &str,
    spec: &DestinationRuleSpec,
) -> Result<(), Error> {
    if spec.host.trim().is_empty() {
        return Err(invalid(object, "spec.host", "must not be empty"));
    }
    effective_policy(object, spec.traffic_policy.as_ref())?;
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        if subset.name.is_empty() {
            return Err(invalid(
                object,
                &format!("spec.subsets[{i}].name"),
                "must not be empty",
            ));
        }
        if !names.insert(&subset.name) {
            return Err(invalid(
                object,
                &format!("spec.subsets[{i}].name"),
                &format!("duplicate subset {:?}", subset.name),
            ));
        }
        let merged = merge_policy(spec.traffic_policy.as_ref(), subset.traffic_policy.as_ref());
        effective_policy(&format!("{object} subset {}", subset.name), merged.as_ref())?;
    }
    Ok(())
}

/// Fields the proxy accepts but does not enforce yet: said once per object, so users see
/// (log, `/config/status`, `sluice_proxy_config_warnings`) what Istio would do
/// differently.
pub(super) fn unsupported_in_destination_rule(
    object: &str,
    spec: &DestinationRuleSpec,
) -> Vec<String> {
    let mut found = Vec::new();
    let policies = spec
        .traffic_policy
        .iter()
        .map(|p| ("trafficPolicy".to_string(), p))
        .chain(spec.subsets.iter().enumerate().filter_map(|(i, s)| {
            s.traffic_policy
                .as_ref()
                .map(|p| (format!("subsets[{i}].trafficPolicy"), p))
        }));
    for (path, policy) in policies {
        if policy.tls.is_some() {
            found.push(format!("{path}.tls"));
        }
    }
    found
        .into_iter()
        .map(|field| format!("{object}: spec.{field} is not enforced by sluice-proxy"))
        .collect()
}

pub(super) fn unsupported_in_virtual_service(
    object: &str,
    spec: &VirtualServiceSpec,
) -> Vec<String> {
    let mut found = Vec::new();
    for (i, http) in spec.http.iter().enumerate() {
        if http.cors_policy.is_some() {
            found.push(format!("http[{i}].corsPolicy"));
        }
    }
    found
        .into_iter()
        .map(|field| format!("{object}: spec.{field} is not enforced by sluice-proxy"))
        .collect()
}

/// A router knows the callers of its own namespace only (it watches pods there), so a
/// `sourceNamespace` naming another namespace can never hold: say so.
pub(super) fn source_namespaces_out_of_reach(file: &ConfigFile, default_ns: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    for vs in &file.virtual_services {
        let object = object_name("VirtualService", &vs.metadata, default_ns);
        for (i, route) in vs.spec.http.iter().enumerate() {
            for (j, m) in route.matches.iter().enumerate() {
                if let Some(ns) = m.source_namespace.as_deref().filter(|ns| *ns != default_ns) {
                    warnings.push(format!(
                        "{object}: http[{i}].match[{j}].sourceNamespace {ns:?}: this router only knows callers in namespace {default_ns:?}, so the match never holds"
                    ));
                }
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use crate::proxy::config::fixture::{parse, GOOD};
    use crate::proxy::config::{build, ProxySettings};

    #[test]
    fn invalid_objects_are_named_with_the_field() {
        // (edit to GOOD, expected message fragment)
        let cases = [
            ("weight: 90", "weight: -5", "VirtualService istioinaction/catalog: spec.http[1].route[0].weight: weight -5 is negative"),
            ("{exact: internal}", "{regex: \"(\"}", "VirtualService istioinaction/catalog: spec.http[0].match[0].headers.x-istio-cohort: invalid regex"),
            ("    subsets:", "    trafficPolicy: {loadBalancer: {simple: FASTEST}}\n    subsets:", "DestinationRule istioinaction/catalog: trafficPolicy.loadBalancer.simple: unknown load balancer \"FASTEST\""),
            ("127.0.0.1:3001", "localhost", "endpoints[0]: address"),
            ("metadata: {name: catalog}\n  spec:\n    hosts", "metadata: {name: \"\"}\n  spec:\n    hosts", "virtualServices[0]: metadata.name: must not be empty"),
        ];
        for (from, to, want) in cases {
            let yaml = GOOD.replacen(from, to, 1);
            let err = build(&parse(&yaml), &ProxySettings::default(), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}\n  wanted: {want}");
        }
        // A route whose weights are all omitted with two destinations sums to zero.
        let yaml = GOOD.replace(", weight: 90", "").replace(", weight: 10", "");
        let err = build(&parse(&yaml), &ProxySettings::default(), None).unwrap_err();
        assert_eq!(err.label(), "zero_weights");
    }

    #[test]
    fn unsupported_fields_are_reported() {
        let yaml = GOOD
            .replace(
                "    subsets:",
                "    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n    subsets:",
            )
            .replace(
                "    - route:\n",
                "    - corsPolicy: {allowOrigins: [{exact: x}]}\n      route:\n",
            );
        let snap = build(&parse(&yaml), &ProxySettings::default(), None).unwrap();
        assert_eq!(
            snap.warnings,
            [
                "DestinationRule istioinaction/catalog: spec.trafficPolicy.tls is not enforced by sluice-proxy",
                "VirtualService istioinaction/catalog: spec.http[1].corsPolicy is not enforced by sluice-proxy",
            ]
        );
    }

    #[test]
    fn a_router_warns_of_source_namespaces_it_cannot_see() {
        let yaml = GOOD.replace(
            "{headers: {x-istio-cohort: {exact: internal}}}",
            "{sourceNamespace: frontend}",
        );
        let router = ProxySettings {
            namespace: "istioinaction".into(),
            router: true,
            ..ProxySettings::default()
        };
        let snap = build(&parse(&yaml), &router, None).unwrap();
        assert_eq!(
            snap.warnings,
            ["VirtualService istioinaction/catalog: http[0].match[0].sourceNamespace \"frontend\": this router only knows callers in namespace \"istioinaction\", so the match never holds"]
        );
        let own = GOOD.replace(
            "{headers: {x-istio-cohort: {exact: internal}}}",
            "{sourceNamespace: istioinaction}",
        );
        assert!(build(&parse(&own), &router, None)
            .unwrap()
            .warnings
            .is_empty());
    }
}
