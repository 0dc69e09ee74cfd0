//! The whole configuration file into a `Snapshot`: endpoints by service, the
//! DestinationRule of each host, the VirtualServices that apply to this proxy, a
//! cluster for every (service, subset) referenced and, for a router, its callers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::file::{object_name, CallerEntry, ConfigFile, Object};
use super::http_route::{build_virtual_hosts, RouteObject};
use super::policy::{effective_policy, merge_policy, EffectivePolicy};
use super::validate::{
    require_name, source_namespaces_out_of_reach, unsupported_in_destination_rule,
    unsupported_in_virtual_service, validate_destination_rule,
};
use super::virtual_host::build_virtual_host;
use super::{invalid, Error, ProxySettings, Snapshot};
use crate::api::istio::{DestinationRuleSpec, VirtualServiceSpec};
use crate::proxy::balance::{Cluster, Endpoint, EndpointInfo};
use crate::proxy::resilience::{ConnectionPool, RetryPolicy};
use crate::proxy::routes::{qualify_host, ClusterKey, RouteTable, SourceIdentity};

/// Validates a config file into a snapshot. `previous` carries endpoint state
/// (ejections, in-flight counts, latency) and connection pools across the reload.
pub fn build(
    file: &ConfigFile,
    settings: &ProxySettings,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Error> {
    let default_ns = file.namespace.as_deref().unwrap_or(&settings.namespace);
    let mut warnings = Vec::new();

    // Endpoints by service FQDN.
    let mut previous_endpoints = previous.map(Snapshot::endpoint_states).unwrap_or_default();
    let mut endpoints_by_service: BTreeMap<String, Vec<Arc<Endpoint>>> = BTreeMap::new();
    for (i, entry) in file.endpoints.iter().enumerate() {
        let object = format!("endpoints[{i}]");
        let ns = entry.namespace.as_deref().unwrap_or(default_ns);
        let service = qualify_host(&entry.service, ns);
        let address: SocketAddr = entry.address.parse().map_err(|e| Error::Invalid {
            object: object.clone(),
            field: "address".into(),
            reason: format!("{:?} is not ip:port ({e})", entry.address),
        })?;
        let http2 = match entry.protocol.as_deref() {
            None | Some("http") | Some("http1") => false,
            Some("h2c") | Some("http2") | Some("grpc") => true,
            Some(other) => {
                return Err(invalid(
                    &object,
                    "protocol",
                    &format!("{other:?} is not http or h2c"),
                ))
            }
        };
        let info = EndpointInfo {
            address,
            labels: entry.labels.clone(),
            zone: entry.zone.clone().unwrap_or_default(),
            workload: entry.workload.clone(),
            http2,
            namespace: ns.to_string(),
        };
        let endpoint = match previous_endpoints.remove(&(service.clone(), address)) {
            Some(e) if e.info == info => e,
            _ => Arc::new(Endpoint::new(info)),
        };
        endpoints_by_service
            .entry(service)
            .or_default()
            .push(endpoint);
    }

    for (i, o) in file.destination_rules.iter().enumerate() {
        require_name(&format!("destinationRules[{i}]"), &o.metadata)?;
    }
    for (i, o) in file.virtual_services.iter().enumerate() {
        require_name(&format!("virtualServices[{i}]"), &o.metadata)?;
    }

    // DestinationRules by host FQDN; the first (by namespace/name) wins a host.
    let mut rules: Vec<&Object<DestinationRuleSpec>> = file.destination_rules.iter().collect();
    rules.sort_by_key(|o| object_name("", &o.metadata, default_ns));
    let mut rule_by_host: HashMap<String, (String, &DestinationRuleSpec)> = HashMap::new();
    for rule in rules {
        let object = object_name("DestinationRule", &rule.metadata, default_ns);
        let ns = rule.metadata.namespace.as_deref().unwrap_or(default_ns);
        validate_destination_rule(&object, &rule.spec)?;
        warnings.extend(unsupported_in_destination_rule(&object, &rule.spec));
        let host = qualify_host(&rule.spec.host, ns);
        if rule_by_host.contains_key(&host) {
            warnings.push(format!(
                "{object}: host {host} already has a DestinationRule; ignored"
            ));
            continue;
        }
        let name = format!("{ns}/{}", rule.metadata.name);
        rule_by_host.insert(host, (name, &rule.spec));
    }

    // VirtualServices that apply to this proxy, in a stable order.
    let mut services: Vec<&Object<VirtualServiceSpec>> = file.virtual_services.iter().collect();
    services.sort_by_key(|o| object_name("", &o.metadata, default_ns));
    let mut virtual_hosts = Vec::new();
    let mut referenced: BTreeSet<ClusterKey> = BTreeSet::new();
    for vs in services {
        let object = object_name("VirtualService", &vs.metadata, default_ns);
        let ns = vs.metadata.namespace.as_deref().unwrap_or(default_ns);
        let vhost = build_virtual_host(
            &object,
            ns,
            &vs.spec,
            &mut referenced,
            settings.default_retry_503,
        )?;
        warnings.extend(unsupported_in_virtual_service(&object, &vs.spec));
        if !settings.identity.acts_as(&vs.spec.gateways) {
            continue;
        }
        virtual_hosts.push(vhost);
    }

    // HTTPRoutes with Service parents: mesh routes, after the VirtualServices (which keep
    // a host both claim).
    for (i, o) in file.http_routes.iter().enumerate() {
        require_name(&format!("httpRoutes[{i}]"), &o.metadata)?;
    }
    if settings.identity.acts_as(&[]) {
        let routes: Vec<RouteObject> = file
            .http_routes
            .iter()
            .map(|o| RouteObject {
                object: object_name("HTTPRoute", &o.metadata, default_ns),
                namespace: o.metadata.namespace.as_deref().unwrap_or(default_ns),
                created: o.metadata.creation_timestamp.as_deref().unwrap_or_default(),
                spec: &o.spec,
            })
            .collect();
        virtual_hosts.extend(build_virtual_hosts(
            &routes,
            &mut referenced,
            &mut warnings,
        )?);
    }

    // Clusters: every referenced (service, subset) and every service without subset.
    for service in endpoints_by_service.keys() {
        referenced.insert(ClusterKey {
            service: service.clone(),
            subset: None,
        });
    }
    let mut clusters = HashMap::new();
    for key in referenced {
        let all = endpoints_by_service
            .get(&key.service)
            .cloned()
            .unwrap_or_default();
        let rule = rule_by_host.get(&key.service);
        let (policy, endpoints) = match (&key.subset, rule) {
            (None, _) => (rule.and_then(|(_, r)| r.traffic_policy.clone()), all),
            (Some(subset), Some((name, r))) => match r.subsets.iter().find(|s| s.name == *subset) {
                Some(s) => {
                    let members = all
                        .into_iter()
                        .filter(|e| {
                            s.labels
                                .iter()
                                .all(|(k, v)| e.info.labels.get(k) == Some(v))
                        })
                        .collect();
                    (
                        merge_policy(r.traffic_policy.as_ref(), s.traffic_policy.as_ref()),
                        members,
                    )
                }
                None => {
                    warnings.push(format!(
                        "{key}: DestinationRule {name} has no subset {subset:?}"
                    ));
                    (None, Vec::new())
                }
            },
            (Some(subset), None) => {
                warnings.push(format!(
                    "{key}: no DestinationRule defines subset {subset:?}"
                ));
                (None, Vec::new())
            }
        };
        if endpoints.is_empty() {
            warnings.push(format!("{key}: no endpoints"));
        }
        let object = rule.map_or_else(|| key.to_string(), |(n, _)| format!("DestinationRule {n}"));
        let EffectivePolicy {
            algorithm,
            limits,
            outlier,
            hash,
            cookie,
            locality,
            locality_enabled,
        } = effective_policy(&object, policy.as_ref())?;
        let pool = previous
            .and_then(|p| p.clusters.get(&key))
            .filter(|c| *c.pool.limits() == limits)
            .map(|c| c.pool.clone())
            .unwrap_or_else(|| Arc::new(ConnectionPool::new(limits)));
        let cluster = Cluster::new(
            key.clone(),
            endpoints,
            algorithm,
            pool,
            outlier,
            rule.map(|(n, _)| n.clone()),
        )
        .with_hash_policy(hash)
        .with_issued_cookie(cookie)
        .with_locality(locality, locality_enabled);
        clusters.insert(key, Arc::new(cluster));
    }

    let (callers, unknown_caller) = if settings.router {
        warnings.extend(source_namespaces_out_of_reach(file, default_ns));
        build_callers(&file.callers, default_ns, settings, &mut warnings)?
    } else {
        (HashMap::new(), SourceIdentity::default())
    };

    let table = RouteTable::new(
        settings.namespace.clone(),
        virtual_hosts,
        endpoints_by_service.keys().cloned(),
    );
    Ok(Snapshot {
        table,
        clusters,
        default_retry: settings
            .default_retries
            .then(|| RetryPolicy::mesh_default(settings.default_retry_503)),
        warnings,
        callers,
        unknown_caller,
    })
}

/// The callers by address. An address listed twice (e.g. a pod IP reused while the old
/// pod's object lingers) names no one: trusting either could route by the wrong labels.
fn build_callers(
    entries: &[CallerEntry],
    default_ns: &str,
    settings: &ProxySettings,
    warnings: &mut Vec<String>,
) -> Result<(HashMap<IpAddr, SourceIdentity>, SourceIdentity), Error> {
    let gateways = settings.identity.gateways.clone();
    let mut callers: HashMap<IpAddr, SourceIdentity> = HashMap::new();
    let mut ambiguous = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let address: IpAddr = entry.address.parse().map_err(|e| Error::Invalid {
            object: format!("callers[{i}]"),
            field: "address".into(),
            reason: format!("{:?} is not an IP address ({e})", entry.address),
        })?;
        let identity = SourceIdentity {
            labels: entry.labels.clone(),
            namespace: entry.namespace.clone().unwrap_or_else(|| default_ns.into()),
            gateways: gateways.clone(),
        };
        if callers.insert(address.to_canonical(), identity).is_some() {
            ambiguous.insert(address.to_canonical());
        }
    }
    for address in ambiguous {
        callers.remove(&address);
        warnings.push(format!(
            "callers: {address} is listed more than once; its requests match no sourceLabels"
        ));
    }
    let unknown = SourceIdentity {
        gateways,
        ..SourceIdentity::default()
    };
    Ok((callers, unknown))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use super::build;
    use crate::proxy::config::fixture::{parse, GOOD};
    use crate::proxy::config::ProxySettings;
    use crate::proxy::routes::ClusterKey;

    #[test]
    fn builds_subset_clusters_from_labels() {
        let snap = build(&parse(GOOD), &ProxySettings::default(), None).unwrap();
        let key = |subset: Option<&str>| ClusterKey {
            service: "catalog.istioinaction.svc.cluster.local".into(),
            subset: subset.map(String::from),
        };
        let ports = |k: ClusterKey| -> Vec<u16> {
            snap.clusters[&k]
                .endpoints
                .iter()
                .map(|e| e.info.address.port())
                .collect()
        };
        assert_eq!(ports(key(Some("version-v1"))), [3001]);
        assert_eq!(ports(key(Some("version-v2"))), [3002]);
        assert_eq!(ports(key(None)), [3001, 3002]);
        assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    }

    #[test]
    fn a_router_knows_its_callers_by_address() {
        let yaml = format!(
            "{GOOD}callers:\n- {{address: 10.244.0.5, labels: {{app: webapp}}}}\n- {{address: 10.244.0.6, namespace: other, labels: {{app: web}}}}\n- {{address: 10.244.0.9, labels: {{app: a}}}}\n- {{address: 10.244.0.9, labels: {{app: b}}}}\n"
        );
        let router = ProxySettings {
            namespace: "istioinaction".into(),
            router: true,
            ..ProxySettings::default()
        };
        let snap = build(&parse(&yaml), &router, None).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // (peer, labels app, namespace)
        let cases = [
            ("10.244.0.5", Some("webapp"), "istioinaction"),
            ("::ffff:10.244.0.5", Some("webapp"), "istioinaction"),
            ("10.244.0.6", Some("web"), "other"),
            ("10.244.0.7", None, ""),
            ("10.244.0.9", None, ""),
        ];
        for (peer, app, namespace) in cases {
            let source = snap.source(&router, ip(peer));
            assert_eq!(source.labels.get("app").map(String::as_str), app, "{peer}");
            assert_eq!(source.namespace, namespace, "{peer}");
            assert_eq!(source.gateways, ["mesh"], "{peer}");
        }
        assert!(
            snap.warnings
                .iter()
                .any(|w| w.contains("10.244.0.9 is listed more than once")),
            "{:?}",
            snap.warnings
        );
        // A sidecar is its own workload whoever the peer is.
        let sidecar = ProxySettings::default();
        let snap = build(&parse(&yaml), &sidecar, None).unwrap();
        assert!(snap.source(&sidecar, ip("10.244.0.5")).labels.is_empty());
        assert_eq!(snap.source(&sidecar, ip("10.244.0.5")).namespace, "default");

        let bad = format!("{GOOD}callers:\n- {{address: \"10.244.0.5:80\"}}\n");
        let err = build(&parse(&bad), &router, None).unwrap_err().to_string();
        assert!(err.contains("callers[0]: address"), "{err}");
    }

    #[test]
    fn endpoint_state_survives_reload() {
        let settings = ProxySettings::default();
        let first = build(&parse(GOOD), &settings, None).unwrap();
        let second = build(&parse(GOOD), &settings, Some(&first)).unwrap();
        let key = ClusterKey {
            service: "catalog.istioinaction.svc.cluster.local".into(),
            subset: None,
        };
        assert!(Arc::ptr_eq(
            &first.clusters[&key].endpoints[0],
            &second.clusters[&key].endpoints[0]
        ));
        assert!(Arc::ptr_eq(
            &first.clusters[&key].pool,
            &second.clusters[&key].pool
        ));
    }

    #[test]
    fn gateway_bound_services_do_not_apply_to_a_sidecar() {
        let yaml = GOOD.replace(
            "    hosts: [catalog]",
            "    hosts: [catalog]\n    gateways: [coolstore-gateway]",
        );
        let snap = build(&parse(&yaml), &ProxySettings::default(), None).unwrap();
        assert!(snap.table.virtual_hosts.is_empty());
    }
}
