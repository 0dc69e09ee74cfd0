//! A DestinationRule's traffic policy: the subset's merged over the top-level one, then
//! checked and turned into what a cluster needs (balancer, pool limits, outlier
//! detection, consistent hash, locality rules).

use std::time::Duration;

use super::{duration_field, invalid, Error};
use crate::api::istio::{self, TrafficPolicy};
use crate::proxy::balance::{
    Algorithm, HashPolicy, IssuedCookie, LocalityDistribute, LocalityRules,
};
use crate::proxy::resilience::{self, OutlierPolicy, PoolLimits};

/// The subset's policy overrides the top-level policy field by field.
pub(super) fn merge_policy(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
) -> Option<TrafficPolicy> {
    match (top, subset) {
        (None, None) => None,
        (Some(t), None) => Some(t.clone()),
        (None, Some(s)) => Some(s.clone()),
        (Some(t), Some(s)) => Some(TrafficPolicy {
            load_balancer: s.load_balancer.clone().or_else(|| t.load_balancer.clone()),
            connection_pool: s
                .connection_pool
                .clone()
                .or_else(|| t.connection_pool.clone()),
            outlier_detection: s
                .outlier_detection
                .clone()
                .or_else(|| t.outlier_detection.clone()),
            tls: s.tls.clone().or_else(|| t.tls.clone()),
        }),
    }
}

fn non_negative(object: &str, field: &str, value: Option<i32>) -> Result<Option<usize>, Error> {
    match value {
        None => Ok(None),
        Some(v) if v < 0 => Err(Error::Resilience {
            object: object.into(),
            source: resilience::Error::Negative {
                field: field.into(),
                value: i64::from(v),
            },
        }),
        // Istio treats 0 as "unset" for these limits.
        Some(0) => Ok(None),
        Some(v) => Ok(Some(v as usize)),
    }
}

/// A cluster's traffic policy after validation.
pub(super) struct EffectivePolicy {
    pub(super) algorithm: Algorithm,
    pub(super) limits: PoolLimits,
    pub(super) outlier: Option<OutlierPolicy>,
    pub(super) hash: Option<HashPolicy>,
    pub(super) cookie: Option<IssuedCookie>,
    pub(super) locality: LocalityRules,
    pub(super) locality_enabled: Option<bool>,
}

pub(super) fn effective_policy(
    object: &str,
    policy: Option<&TrafficPolicy>,
) -> Result<EffectivePolicy, Error> {
    let Some(policy) = policy else {
        return Ok(EffectivePolicy {
            algorithm: Algorithm::LeastRequest,
            limits: PoolLimits::default(),
            outlier: None,
            hash: None,
            cookie: None,
            locality: LocalityRules::default(),
            locality_enabled: None,
        });
    };
    let field = "trafficPolicy.loadBalancer.simple";
    let algorithm = match policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.simple.as_deref())
    {
        Some(simple) => Algorithm::parse(field, simple).map_err(|source| Error::Balance {
            object: object.into(),
            source,
        })?,
        None => Algorithm::LeastRequest,
    };
    let mut limits = PoolLimits::default();
    if let Some(pool) = &policy.connection_pool {
        let p = "trafficPolicy.connectionPool";
        if let Some(tcp) = &pool.tcp {
            limits.max_connections = non_negative(
                object,
                &format!("{p}.tcp.maxConnections"),
                tcp.max_connections,
            )?;
        }
        if let Some(http) = &pool.http {
            limits.max_pending = non_negative(
                object,
                &format!("{p}.http.http1MaxPendingRequests"),
                http.http1_max_pending_requests,
            )?;
            limits.max_requests = non_negative(
                object,
                &format!("{p}.http.http2MaxRequests"),
                http.http2_max_requests,
            )?;
            limits.max_retries =
                non_negative(object, &format!("{p}.http.maxRetries"), http.max_retries)?;
            limits.max_requests_per_connection = non_negative(
                object,
                &format!("{p}.http.maxRequestsPerConnection"),
                http.max_requests_per_connection,
            )?
            .map(|v| v as u32);
        }
    }
    let outlier = match &policy.outlier_detection {
        None => None,
        Some(od) => {
            let f = "trafficPolicy.outlierDetection";
            let percent = |name: &str, v: Option<i32>, default: u32| -> Result<u32, Error> {
                match v {
                    None => Ok(default),
                    Some(v) if (0..=100).contains(&v) => Ok(v as u32),
                    Some(v) => Err(invalid(
                        object,
                        &format!("{f}.{name}"),
                        &format!("{v} is not 0..100"),
                    )),
                }
            };
            Some(OutlierPolicy {
                consecutive_5xx: od.consecutive_5xx_errors.unwrap_or(5),
                consecutive_gateway: od.consecutive_gateway_errors.unwrap_or(0),
                interval: match &od.interval {
                    Some(t) => duration_field(object, &format!("{f}.interval"), t)?,
                    None => Duration::from_secs(10),
                },
                base_ejection: match &od.base_ejection_time {
                    Some(t) => duration_field(object, &format!("{f}.baseEjectionTime"), t)?,
                    None => Duration::from_secs(30),
                },
                max_ejection_percent: percent("maxEjectionPercent", od.max_ejection_percent, 10)?,
                min_health_percent: percent("minHealthPercent", od.min_health_percent, 0)?,
            })
        }
    };
    let mut cookie = None;
    let hash = match policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.consistent_hash.as_ref())
    {
        None => None,
        Some(ch) => {
            let f = "trafficPolicy.loadBalancer.consistentHash";
            let mut set = Vec::new();
            if let Some(h) = ch.http_header_name.as_ref().filter(|h| !h.is_empty()) {
                http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    invalid(
                        object,
                        &format!("{f}.httpHeaderName"),
                        "invalid header name",
                    )
                })?;
                set.push(HashPolicy::Header(h.to_ascii_lowercase()));
            }
            if let Some(c) = &ch.http_cookie {
                if c.name.is_empty() {
                    return Err(invalid(
                        object,
                        &format!("{f}.httpCookie.name"),
                        "must not be empty",
                    ));
                }
                set.push(HashPolicy::Cookie(c.name.clone()));
                if let Some(ttl) = &c.ttl {
                    cookie = Some(IssuedCookie {
                        name: c.name.clone(),
                        path: c.path.clone().filter(|p| !p.is_empty()),
                        ttl: duration_field(object, &format!("{f}.httpCookie.ttl"), ttl)?,
                    });
                }
            }
            if let Some(q) = ch
                .http_query_parameter_name
                .as_ref()
                .filter(|q| !q.is_empty())
            {
                set.push(HashPolicy::QueryParam(q.clone()));
            }
            if ch.use_source_ip == Some(true) {
                set.push(HashPolicy::SourceIp);
            }
            if set.len() != 1 {
                return Err(invalid(
                    object,
                    f,
                    "set exactly one of httpHeaderName, httpCookie, httpQueryParameterName, useSourceIp",
                ));
            }
            set.pop()
        }
    };
    let setting = policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref());
    let locality = match setting {
        None => LocalityRules::default(),
        Some(l) => locality_rules(object, l)?,
    };
    Ok(EffectivePolicy {
        algorithm,
        limits,
        outlier,
        hash,
        cookie,
        locality,
        locality_enabled: setting.and_then(|l| l.enabled),
    })
}

/// Istio's validation of `localityLbSetting`: one of distribute / failover, weights of
/// each `to` summing to 100, failover between two different regions.
fn locality_rules(object: &str, l: &istio::LocalityLbSetting) -> Result<LocalityRules, Error> {
    let f = "trafficPolicy.loadBalancer.localityLbSetting";
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        return Err(invalid(
            object,
            f,
            "set either distribute or failover, not both",
        ));
    }
    let mut rules = LocalityRules::default();
    for (i, d) in l.distribute.iter().enumerate() {
        let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if total != 100 {
            return Err(invalid(
                object,
                &format!("{f}.distribute[{i}].to"),
                &format!("weights sum to {total}, not 100"),
            ));
        }
        rules.distribute.push(LocalityDistribute {
            from: d.from.clone(),
            to: d.to.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        });
    }
    for (i, fo) in l.failover.iter().enumerate() {
        if fo.from.is_empty() || fo.to.is_empty() || fo.from == fo.to {
            return Err(invalid(
                object,
                &format!("{f}.failover[{i}]"),
                "from and to must be two different regions",
            ));
        }
        rules.failover.push((fo.from.clone(), fo.to.clone()));
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use crate::proxy::config::fixture::{parse, GOOD};
    use crate::proxy::config::{build, ProxySettings};

    #[test]
    fn locality_settings_are_validated() {
        let with = |setting: &str| {
            GOOD.replace(
                "    subsets:",
                &format!("    trafficPolicy: {{outlierDetection: {{}}, loadBalancer: {{localityLbSetting: {setting}}}}}\n    subsets:"),
            )
        };
        let ok = build(
            &parse(&with("{distribute: [{from: \"us-west1/*\", to: {\"us-west1/a/*\": 60, \"us-west1/b/*\": 40}}]}")),
            &ProxySettings::default(),
            None,
        )
        .unwrap();
        assert!(
            ok.warnings.iter().all(|w| !w.contains("localityLbSetting")),
            "{:?}",
            ok.warnings
        );
        let cases = [
            (
                "{distribute: [{from: \"*\", to: {\"a/*\": 60}}]}",
                "trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: weights sum to 60, not 100",
            ),
            (
                "{failover: [{from: us-west1, to: us-west1}]}",
                "trafficPolicy.loadBalancer.localityLbSetting.failover[0]: from and to must be two different regions",
            ),
            (
                "{distribute: [{from: \"*\", to: {\"a/*\": 100}}], failover: [{from: a, to: b}]}",
                "trafficPolicy.loadBalancer.localityLbSetting: set either distribute or failover, not both",
            ),
        ];
        for (setting, want) in cases {
            let err = build(&parse(&with(setting)), &ProxySettings::default(), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{setting}: {err}");
        }
    }
}
