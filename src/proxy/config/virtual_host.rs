//! A VirtualService turned into a `VirtualHost`: its routes with their matches,
//! weighted destinations, timeouts, retries, faults, mirrors, rewrites and header
//! operations. Building it is what checks it: every error names the field.

use std::collections::{BTreeMap, BTreeSet};

use super::{duration_field, invalid, Error};
use crate::api::istio::{self, HeaderOperations, HttpRoute, VirtualServiceSpec};
use crate::proxy::resilience::{self, Backoff, RetryConditions, RetryPolicy};
use crate::proxy::routes::{
    self, qualify_host, ClusterKey, Fault, HeaderOps, MatchBlock, Mirror, Rewrite, Route,
    RouteDestination, StringMatcher, VirtualHost, WeightedDestinations,
};

pub(super) fn build_virtual_host(
    object: &str,
    namespace: &str,
    spec: &VirtualServiceSpec,
    referenced: &mut BTreeSet<ClusterKey>,
    default_retry_503: bool,
) -> Result<VirtualHost, Error> {
    if spec.hosts.is_empty() {
        return Err(invalid(
            object,
            "spec.hosts",
            "at least one host is required",
        ));
    }
    let mut routes = Vec::with_capacity(spec.http.len());
    for (i, http) in spec.http.iter().enumerate() {
        routes.push(build_route(
            object,
            namespace,
            &format!("spec.http[{i}]"),
            http,
            referenced,
            default_retry_503,
        )?);
    }
    Ok(VirtualHost {
        name: object.trim_start_matches("VirtualService ").to_string(),
        hosts: spec
            .hosts
            .iter()
            .map(|h| qualify_host(h, namespace))
            .collect(),
        routes,
    })
}

fn route_err(object: &str) -> impl Fn(routes::Error) -> Error + '_ {
    move |source| Error::Route {
        object: object.into(),
        source,
    }
}

fn build_route(
    object: &str,
    namespace: &str,
    field: &str,
    http: &HttpRoute,
    referenced: &mut BTreeSet<ClusterKey>,
    default_retry_503: bool,
) -> Result<Route, Error> {
    let mut matches = Vec::with_capacity(http.matches.len());
    for (j, m) in http.matches.iter().enumerate() {
        let mf = format!("{field}.match[{j}]");
        let ignore_case = m.ignore_uri_case.unwrap_or(false);
        let compile = |name: &str, sm: &Option<istio::StringMatch>, ic: bool| {
            sm.as_ref()
                .map(|sm| StringMatcher::compile(&format!("{mf}.{name}"), sm, ic))
                .transpose()
                .map_err(route_err(object))
        };
        let compile_map = |name: &str, map: &BTreeMap<String, istio::StringMatch>| {
            map.iter()
                .map(|(k, sm)| {
                    StringMatcher::compile(&format!("{mf}.{name}.{k}"), sm, false)
                        .map(|c| (k.to_ascii_lowercase(), c))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(route_err(object))
        };
        let port = m
            .port
            .map(|p| {
                u16::try_from(p).map_err(|_| invalid(object, &format!("{mf}.port"), "not a port"))
            })
            .transpose()?;
        matches.push(MatchBlock {
            name: m.name.clone(),
            uri: compile("uri", &m.uri, ignore_case)?,
            ignore_uri_case: ignore_case,
            scheme: compile("scheme", &m.scheme, false)?,
            method: compile("method", &m.method, false)?,
            authority: compile("authority", &m.authority, false)?,
            headers: compile_map("headers", &m.headers)?,
            without_headers: compile_map("withoutHeaders", &m.without_headers)?,
            query_params: compile_map("queryParams", &m.query_params)?,
            port,
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.clone(),
            gateways: m.gateways.clone(),
        });
    }

    let destination = |f: &str, d: &istio::Destination| -> Result<ClusterKey, Error> {
        if d.host.trim().is_empty() {
            return Err(invalid(object, &format!("{f}.host"), "must not be empty"));
        }
        Ok(ClusterKey {
            service: qualify_host(&d.host, namespace),
            subset: d.subset.clone().filter(|s| !s.is_empty()),
        })
    };
    let mut entries = Vec::with_capacity(http.route.len());
    for (k, rd) in http.route.iter().enumerate() {
        let f = format!("{field}.route[{k}]");
        let cluster = destination(&format!("{f}.destination"), &rd.destination)?;
        referenced.insert(cluster.clone());
        let port = rd
            .destination
            .port
            .as_ref()
            .and_then(|p| p.number)
            .map(|n| {
                u16::try_from(n)
                    .map_err(|_| invalid(object, &format!("{f}.destination.port"), "not a port"))
            })
            .transpose()?;
        let headers = rd.headers.as_ref();
        entries.push((
            RouteDestination {
                cluster,
                port,
                request_headers: header_ops(
                    object,
                    &format!("{f}.headers.request"),
                    headers.and_then(|h| h.request.as_ref()),
                )?,
                response_headers: header_ops(
                    object,
                    &format!("{f}.headers.response"),
                    headers.and_then(|h| h.response.as_ref()),
                )?,
            },
            rd.weight.map(i64::from),
        ));
    }
    let destinations =
        WeightedDestinations::new(&format!("{field}.route"), entries).map_err(route_err(object))?;

    let timeout = http
        .timeout
        .as_deref()
        .map(|t| duration_field(object, &format!("{field}.timeout"), t))
        .transpose()?
        .filter(|t| !t.is_zero());

    let retries = match &http.retries {
        None => None,
        Some(r) => {
            let attempts = r.attempts.unwrap_or(0);
            if attempts < 0 {
                return Err(Error::Resilience {
                    object: object.into(),
                    source: resilience::Error::Negative {
                        field: format!("{field}.retries.attempts"),
                        value: i64::from(attempts),
                    },
                });
            }
            // Unset retryOn: the mesh default's conditions, as Istio fills them in.
            let conditions = match r.retry_on.as_deref() {
                None => RetryPolicy::mesh_default(default_retry_503).conditions,
                Some(retry_on) => {
                    RetryConditions::parse(&format!("{field}.retries.retryOn"), retry_on).map_err(
                        |source| Error::Resilience {
                            object: object.into(),
                            source,
                        },
                    )?
                }
            };
            let per_try_timeout = r
                .per_try_timeout
                .as_deref()
                .map(|t| duration_field(object, &format!("{field}.retries.perTryTimeout"), t))
                .transpose()?
                .filter(|t| !t.is_zero());
            Some(RetryPolicy {
                attempts: attempts as u32,
                per_try_timeout,
                conditions,
                backoff: Backoff::default(),
                remote_localities: r.retry_remote_localities.unwrap_or(false),
            })
        }
    };

    let fault = match &http.fault {
        None => None,
        Some(f) => {
            let delay = match &f.delay {
                None => None,
                Some(d) => {
                    let ff = format!("{field}.fault.delay");
                    let fixed = d.fixed_delay.as_deref().ok_or_else(|| {
                        invalid(object, &format!("{ff}.fixedDelay"), "is required")
                    })?;
                    Some((
                        duration_field(object, &format!("{ff}.fixedDelay"), fixed)?,
                        percent_value(object, &format!("{ff}.percentage"), d.percentage)?,
                    ))
                }
            };
            let abort = match &f.abort {
                None => None,
                Some(a) => {
                    let ff = format!("{field}.fault.abort");
                    let status = a
                        .http_status
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| {
                            invalid(object, &format!("{ff}.httpStatus"), "must be 200..599")
                        })?;
                    Some((
                        status as u16,
                        percent_value(object, &format!("{ff}.percentage"), a.percentage)?,
                    ))
                }
            };
            Some(Fault { delay, abort })
        }
    };

    let mut mirrors = Vec::new();
    if let Some(m) = &http.mirror {
        let cluster = destination(&format!("{field}.mirror"), m)?;
        referenced.insert(cluster.clone());
        let percent = percent_value(
            object,
            &format!("{field}.mirrorPercentage"),
            http.mirror_percentage,
        )?;
        mirrors.push(Mirror { cluster, percent });
    }
    for (k, m) in http.mirrors.iter().enumerate() {
        let f = format!("{field}.mirrors[{k}]");
        let cluster = destination(&format!("{f}.destination"), &m.destination)?;
        referenced.insert(cluster.clone());
        let percent = percent_value(object, &format!("{f}.percentage"), m.percentage)?;
        mirrors.push(Mirror { cluster, percent });
    }

    let headers = http.headers.as_ref();
    let rewrite = http.rewrite.as_ref().map(|r| Rewrite {
        uri: r.uri.clone().filter(|u| !u.is_empty()),
        authority: r.authority.clone().filter(|a| !a.is_empty()),
        full_path: false,
    });
    if let Some(Some(a)) = rewrite.as_ref().map(|r| r.authority.as_ref()) {
        http::HeaderValue::from_str(a).map_err(|_| {
            invalid(
                object,
                &format!("{field}.rewrite.authority"),
                "invalid authority",
            )
        })?;
    }
    Ok(Route {
        name: http.name.clone(),
        matches,
        destinations,
        timeout,
        retries,
        fault,
        mirrors,
        request_headers: header_ops(
            object,
            &format!("{field}.headers.request"),
            headers.and_then(|h| h.request.as_ref()),
        )?,
        response_headers: header_ops(
            object,
            &format!("{field}.headers.response"),
            headers.and_then(|h| h.response.as_ref()),
        )?,
        rewrite,
        reply: None,
    })
}

pub(super) fn header_ops(
    object: &str,
    field: &str,
    ops: Option<&HeaderOperations>,
) -> Result<HeaderOps, Error> {
    let Some(ops) = ops else {
        return Ok(HeaderOps::default());
    };
    let check = |name: &str, value: Option<&str>| -> Result<(), Error> {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(object, field, &format!("invalid header name {name:?}")))?;
        if let Some(v) = value {
            http::HeaderValue::from_str(v).map_err(|_| {
                invalid(object, field, &format!("invalid value for header {name:?}"))
            })?;
        }
        Ok(())
    };
    for (k, v) in ops.set.iter().chain(&ops.add) {
        check(k, Some(v))?;
    }
    for k in &ops.remove {
        check(k, None)?;
    }
    Ok(HeaderOps {
        set: ops
            .set
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        add: ops
            .add
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        remove: ops.remove.iter().map(|k| k.to_ascii_lowercase()).collect(),
    })
}

fn percent_value(object: &str, field: &str, p: Option<istio::Percent>) -> Result<f64, Error> {
    let value = p.map_or(100.0, |p| p.value);
    if !(0.0..=100.0).contains(&value) || value.is_nan() {
        return Err(invalid(object, field, &format!("{value} is not 0..100")));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::proxy::config::fixture::{parse, GOOD};
    use crate::proxy::config::{build, ProxySettings};

    #[test]
    fn retries_and_timeouts_are_parsed() {
        let yaml = GOOD.replace(
            "    - route:\n",
            "    - timeout: 0.5s\n      retries: {attempts: 2, retryOn: \"5xx,408\", perTryTimeout: 300ms}\n      route:\n",
        );
        let snap = build(&parse(&yaml), &ProxySettings::default(), None).unwrap();
        let route = &snap.table.virtual_hosts[0].routes[1];
        assert_eq!(route.timeout, Some(Duration::from_millis(500)));
        let r = route.retries.as_ref().unwrap();
        assert_eq!(
            (r.attempts, r.per_try_timeout),
            (2, Some(Duration::from_millis(300)))
        );
        assert_eq!(r.conditions.codes, [408]);
        let bad = GOOD.replace(
            "    - route:\n",
            "    - retries: {attempts: 1, retryOn: bogus}\n      route:\n",
        );
        let err = build(&parse(&bad), &ProxySettings::default(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.http[1].retries.retryOn: unknown retry condition \"bogus\""),
            "{err}"
        );
    }
}
