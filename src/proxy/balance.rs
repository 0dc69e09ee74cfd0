//! Clusters (a service or one of its subsets), their endpoints' live state, and the load
//! balancers that pick an endpoint for each try.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::proxy::resilience::{ConnectionPool, OutlierPolicy, OutlierState, TryOutcome};
use crate::proxy::routes::ClusterKey;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{field}: unknown load balancer {value:?} (expected ROUND_ROBIN, RANDOM, LEAST_REQUEST, LEAST_CONN or PEAK_EWMA)")]
    UnknownBalancer { field: String, value: String },
}

/// `loadBalancer.consistentHash`: what a request's affinity key is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashPolicy {
    Header(String),
    Cookie(String),
    QueryParam(String),
    SourceIp,
}

impl HashPolicy {
    pub fn describe(&self) -> String {
        match self {
            HashPolicy::Header(h) => format!("httpHeaderName:{h}"),
            HashPolicy::Cookie(c) => format!("httpCookie:{c}"),
            HashPolicy::QueryParam(q) => format!("httpQueryParameterName:{q}"),
            HashPolicy::SourceIp => "useSourceIp".into(),
        }
    }

    /// The request's affinity key, or None when the request does not carry it (then the
    /// cluster's normal balancer decides).
    pub fn key(&self, headers: &http::HeaderMap, query: Option<&str>, peer: IpAddr) -> Option<u64> {
        let mut hasher = DefaultHasher::new();
        match self {
            HashPolicy::Header(name) => headers.get(name.as_str())?.as_bytes().hash(&mut hasher),
            // Same hashing as `hash_key`, so an issued cookie maps where it was aimed.
            HashPolicy::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then_some(v)
                })?
                .hash(&mut hasher),
            HashPolicy::QueryParam(name) => query?
                .split('&')
                .find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then_some(v)
                })?
                .hash(&mut hasher),
            HashPolicy::SourceIp => peer.hash(&mut hasher),
        }
        Some(hasher.finish())
    }
}

/// The affinity key of a header, cookie or query value (what `HashPolicy::key` hashes).
pub fn hash_key(value: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// `consistentHash.httpCookie` with a `ttl`: a request without the cookie gets one
/// (Envoy's behaviour), so the client sticks to the endpoint its value hashes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCookie {
    pub name: String,
    pub path: Option<String>,
    /// 0 = a session cookie (no Max-Age), as in Envoy.
    pub ttl: Duration,
}

impl IssuedCookie {
    /// A fresh cookie value from a random draw.
    pub fn value(draw: u64) -> String {
        format!("{draw:016x}")
    }

    /// The `Set-Cookie` header for `value`.
    pub fn header(&self, value: &str) -> String {
        let mut out = format!("{}={value}", self.name);
        if !self.ttl.is_zero() {
            out.push_str(&format!("; Max-Age={}", self.ttl.as_secs()));
        }
        if let Some(path) = &self.path {
            out.push_str(&format!("; Path={path}"));
        }
        out.push_str("; HttpOnly");
        out
    }
}

/// `localityLbSetting` rules (Istio allows one of the two kinds per policy).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalityRules {
    pub distribute: Vec<LocalityDistribute>,
    /// (from region, to region): where traffic goes once the local region is unusable.
    pub failover: Vec<(String, String)>,
}

/// Clients in `from` send `to`'s weights (percent) to the matching localities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalityDistribute {
    pub from: String,
    pub to: Vec<(String, u32)>,
}

/// Istio's locality pattern `region/zone/subzone`: `*` matches everything from its
/// segment on, and missing trailing segments match anything.
pub fn locality_matches(pattern: &str, locality: &str) -> bool {
    let mut segments = locality.split('/');
    for wanted in pattern.split('/') {
        if wanted == "*" {
            return true;
        }
        if segments.next().unwrap_or("") != wanted {
            return false;
        }
    }
    true
}

/// Endpoints split into tiers, best first, for a proxy in `own` (`region/zone`). With a
/// `distribute` rule for `own`: the tier drawn by weight (`draw`) among the `to`
/// localities that have usable endpoints, then the other ones; localities outside `to`
/// get nothing. Otherwise: same zone, same region, the `failover` regions of the own
/// region in order, elsewhere. Empty tiers are left out.
pub fn locality_tiers<'a>(
    pool: Vec<&'a Arc<Endpoint>>,
    own: &str,
    rules: &LocalityRules,
    draw: u64,
) -> Vec<Vec<&'a Arc<Endpoint>>> {
    if let Some(rule) = rules
        .distribute
        .iter()
        .find(|r| locality_matches(&r.from, own))
    {
        let mut left = pool.clone();
        let mut groups: Vec<(u32, Vec<&Arc<Endpoint>>)> = Vec::new();
        for (pattern, weight) in &rule.to {
            let (members, rest): (Vec<_>, Vec<_>) = left
                .into_iter()
                .partition(|e| locality_matches(pattern, &e.info.zone));
            left = rest;
            if !members.is_empty() && *weight > 0 {
                groups.push((*weight, members));
            }
        }
        let total: u64 = groups.iter().map(|(w, _)| u64::from(*w)).sum();
        if total > 0 {
            let mut point = draw % total;
            let chosen = groups
                .iter()
                .position(|(w, _)| {
                    let hit = point < u64::from(*w);
                    point = point.saturating_sub(u64::from(*w));
                    hit
                })
                .unwrap_or(0);
            let first = groups.remove(chosen).1;
            return std::iter::once(first)
                .chain(groups.into_iter().map(|(_, g)| g))
                .collect();
        }
        // No `to` locality has a usable endpoint: fall through to the usual order.
    }
    let region = own.split('/').next().unwrap_or("");
    let same_region =
        |e: &&Arc<Endpoint>| !region.is_empty() && e.info.zone.split('/').next() == Some(region);
    let (same_zone, rest): (Vec<_>, Vec<_>) = pool.into_iter().partition(|e| e.info.zone == own);
    let (in_region, mut rest): (Vec<_>, Vec<_>) = rest.into_iter().partition(same_region);
    let mut tiers = vec![same_zone, in_region];
    for (from, to) in &rules.failover {
        if from != region {
            continue;
        }
        let (target, others): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|e| e.info.zone.split('/').next() == Some(to.as_str()));
        rest = others;
        tiers.push(target);
    }
    tiers.push(rest);
    tiers.retain(|t| !t.is_empty());
    tiers
}

/// A second draw mixed from the two (splitmix64), for the locality choice.
fn mix(draws: (u64, u64)) -> u64 {
    let mut z = (draws.0 ^ draws.1.rotate_left(32)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Per-request inputs to `Cluster::pick_with` beyond the draws.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickOptions {
    /// Session-affinity key (consistentHash); None = the cluster's balancer decides.
    pub affinity: Option<u64>,
    /// Retries may leave the proxy's locality once its endpoints were all tried.
    pub remote_localities: bool,
}

/// Rendezvous (highest random weight) score: a key keeps its endpoint while that
/// endpoint stays, and only the keys of a removed endpoint move.
fn rendezvous_score(key: u64, address: SocketAddr) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    address.hash(&mut hasher);
    hasher.finish()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    Random,
    /// Two random choices, fewer in-flight requests wins (Istio's default).
    LeastRequest,
    /// Two random choices, lower (peak EWMA latency x (in-flight + 1)) wins. Not an
    /// Istio name: a sluice extension for latency-aware balancing.
    PeakEwma,
}

impl Algorithm {
    pub fn parse(field: &str, simple: &str) -> Result<Self, Error> {
        match simple {
            "ROUND_ROBIN" => Ok(Algorithm::RoundRobin),
            "RANDOM" => Ok(Algorithm::Random),
            "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" => Ok(Algorithm::LeastRequest),
            "PEAK_EWMA" => Ok(Algorithm::PeakEwma),
            other => Err(Error::UnknownBalancer {
                field: field.into(),
                value: other.into(),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "ROUND_ROBIN",
            Algorithm::Random => "RANDOM",
            Algorithm::LeastRequest => "LEAST_REQUEST",
            Algorithm::PeakEwma => "PEAK_EWMA",
        }
    }
}

/// An endpoint as configured (file mode) or discovered (EndpointSlice + Pod).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EndpointInfo {
    pub address: SocketAddr,
    pub labels: BTreeMap<String, String>,
    /// `region/zone` (or `region/zone/subzone`), empty if unknown.
    pub zone: String,
    pub workload: Option<String>,
    pub namespace: String,
    /// Speak HTTP/2 with prior knowledge (h2c) to this endpoint.
    pub http2: bool,
}

/// How fast the EWMA forgets: the decay time constant.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// An endpoint's live state, shared by every cluster that contains it and kept across
/// reloads (keyed by service and address) so ejections and EWMA survive a config change.
#[derive(Debug)]
pub struct Endpoint {
    pub info: EndpointInfo,
    pub in_flight: AtomicU32,
    pub outlier: Mutex<OutlierState>,
    pub ejections_total: AtomicU64,
    /// (EWMA latency in ns, last update).
    ewma: Mutex<(f64, Option<Instant>)>,
    /// `ip:port` as a URI authority, built once instead of per request.
    pub uri_authority: Option<http::uri::Authority>,
    /// Request metric handles for requests served by this endpoint. Valid for the
    /// endpoint's lifetime: a reload keeps an endpoint only when its info is unchanged.
    pub metric_handles: crate::proxy::metrics::HandleCache,
}

impl Endpoint {
    pub fn new(info: EndpointInfo) -> Self {
        Endpoint {
            uri_authority: http::uri::Authority::try_from(info.address.to_string()).ok(),
            metric_handles: Default::default(),
            info,
            in_flight: AtomicU32::new(0),
            outlier: Mutex::new(OutlierState::default()),
            ejections_total: AtomicU64::new(0),
            ewma: Mutex::new((0.0, None)),
        }
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.outlier
            .lock()
            .map(|o| o.is_ejected(now))
            .unwrap_or(false)
    }

    /// Peak EWMA: a slower sample takes over at once, faster ones decay in.
    pub fn observe_latency(&self, latency: Duration, now: Instant) {
        let Ok(mut ewma) = self.ewma.lock() else {
            return;
        };
        let sample = latency.as_nanos() as f64;
        let (value, last) = *ewma;
        let next = match last {
            None => sample,
            Some(_) if sample > value => sample,
            Some(last) => {
                let elapsed = now.saturating_duration_since(last).as_secs_f64();
                let w = (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
                value * w + sample * (1.0 - w)
            }
        };
        *ewma = (next, Some(now));
    }

    fn ewma_cost(&self) -> f64 {
        let latency = self.ewma.lock().map(|e| e.0).unwrap_or(0.0);
        let in_flight = f64::from(self.in_flight.load(Ordering::Relaxed));
        // Unknown latency is treated as cheap so new endpoints get probed.
        latency.max(1.0) * (in_flight + 1.0)
    }
}

/// Marks an endpoint busy for the duration of a try.
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A cluster: a service or subset with its endpoints and effective traffic policy.
#[derive(Debug)]
pub struct Cluster {
    pub key: ClusterKey,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub algorithm: Algorithm,
    pub pool: Arc<ConnectionPool>,
    pub outlier: Option<OutlierPolicy>,
    /// Prefer endpoints in the proxy's own locality (Istio enables this only together
    /// with outlier detection, so failover has a signal).
    pub locality_aware: bool,
    /// Which DestinationRule supplied the policy (`namespace/name`), if any.
    pub destination_rule: Option<String>,
    /// Session affinity; requests without the key use `algorithm`.
    pub hash_policy: Option<HashPolicy>,
    /// With `httpCookie.ttl`: the cookie given to requests that lack it.
    pub issued_cookie: Option<IssuedCookie>,
    /// `localityLbSetting` distribute / failover rules.
    pub locality_rules: LocalityRules,
    round_robin: AtomicUsize,
}

impl Cluster {
    pub fn new(
        key: ClusterKey,
        endpoints: Vec<Arc<Endpoint>>,
        algorithm: Algorithm,
        pool: Arc<ConnectionPool>,
        outlier: Option<OutlierPolicy>,
        destination_rule: Option<String>,
    ) -> Self {
        Cluster {
            key,
            endpoints,
            algorithm,
            pool,
            locality_aware: outlier.is_some(),
            outlier,
            destination_rule,
            hash_policy: None,
            issued_cookie: None,
            locality_rules: LocalityRules::default(),
            round_robin: AtomicUsize::new(0),
        }
    }

    pub fn with_hash_policy(mut self, policy: Option<HashPolicy>) -> Self {
        self.hash_policy = policy;
        self
    }

    pub fn with_issued_cookie(mut self, cookie: Option<IssuedCookie>) -> Self {
        self.issued_cookie = cookie;
        self
    }

    /// `enabled: false` switches locality-aware balancing off.
    pub fn with_locality(mut self, rules: LocalityRules, enabled: Option<bool>) -> Self {
        self.locality_rules = rules;
        if enabled == Some(false) {
            self.locality_aware = false;
        }
        self
    }

    /// Endpoints the balancer may use, best locality first: not ejected (unless fewer
    /// than `minHealthPercent` are healthy: then all, like Envoy's panic mode); with
    /// locality awareness split into same zone, same region, elsewhere (empty tiers
    /// left out).
    fn candidate_tiers(&self, now: Instant, own_zone: &str, draw: u64) -> Vec<Vec<&Arc<Endpoint>>> {
        let healthy: Vec<&Arc<Endpoint>> = self
            .endpoints
            .iter()
            .filter(|e| !e.is_ejected(now))
            .collect();
        let min_health = self.outlier.as_ref().map_or(0, |o| o.min_health_percent) as usize;
        let pool = if min_health > 0 && healthy.len() * 100 < self.endpoints.len() * min_health {
            self.endpoints.iter().collect()
        } else {
            healthy
        };
        if !self.locality_aware || own_zone.is_empty() {
            return vec![pool];
        }
        locality_tiers(pool, own_zone, &self.locality_rules, draw)
    }

    /// Picks an endpoint, avoiding `tried` when another is available. `draws` are two
    /// uniform random numbers. None = no healthy upstream (UH).
    pub fn pick(
        &self,
        now: Instant,
        own_zone: &str,
        tried: &[SocketAddr],
        draws: (u64, u64),
    ) -> Option<Arc<Endpoint>> {
        self.pick_with(now, own_zone, tried, draws, PickOptions::default())
    }

    /// Like `pick`, with session affinity and remote-locality retries.
    pub fn pick_with(
        &self,
        now: Instant,
        own_zone: &str,
        tried: &[SocketAddr],
        draws: (u64, u64),
        options: PickOptions,
    ) -> Option<Arc<Endpoint>> {
        // The common request (first try, no locality tiers, nothing ejected) chooses from
        // the endpoint list itself instead of building candidate lists.
        if tried.is_empty()
            && (!self.locality_aware || own_zone.is_empty())
            && !self.endpoints.iter().any(|e| e.is_ejected(now))
        {
            let all = &self.endpoints;
            return self.choose(all.len(), |i| &all[i], draws, options.affinity);
        }
        let tiers = self.candidate_tiers(now, own_zone, mix(draws));
        let untried =
            |tier: &Vec<&Arc<Endpoint>>| tier.iter().any(|e| !tried.contains(&e.info.address));
        // The best locality, or with retryRemoteLocalities the best one not yet exhausted.
        let tier = if options.remote_localities {
            tiers.iter().find(|t| untried(t)).or(tiers.first())
        } else {
            tiers.first()
        }?;
        let fresh: Vec<_> = tier
            .iter()
            .copied()
            .filter(|e| !tried.contains(&e.info.address))
            .collect();
        let set = if fresh.is_empty() {
            tier.clone()
        } else {
            fresh
        };
        self.choose(set.len(), |i| set[i], draws, options.affinity)
    }

    /// The balancer's choice among `n` candidates (`at(i)` is the i-th).
    fn choose<'a>(
        &self,
        n: usize,
        at: impl Fn(usize) -> &'a Arc<Endpoint>,
        draws: (u64, u64),
        affinity: Option<u64>,
    ) -> Option<Arc<Endpoint>> {
        if n == 0 {
            return None;
        }
        if let Some(key) = affinity {
            return (0..n)
                .map(&at)
                .max_by_key(|e| rendezvous_score(key, e.info.address))
                .cloned();
        }
        let len = n as u64;
        let chosen = match self.algorithm {
            Algorithm::RoundRobin => {
                let i = self.round_robin.fetch_add(1, Ordering::Relaxed);
                at(i % n)
            }
            Algorithm::Random => at((draws.0 % len) as usize),
            Algorithm::LeastRequest | Algorithm::PeakEwma => {
                let a = at((draws.0 % len) as usize);
                // The second choice is a different endpoint when there are several.
                let b = if len > 1 {
                    let offset = 1 + draws.1 % (len - 1);
                    at(((draws.0 + offset) % len) as usize)
                } else {
                    a
                };
                let prefer_b = if self.algorithm == Algorithm::LeastRequest {
                    b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed)
                } else {
                    b.ewma_cost() < a.ewma_cost()
                };
                if prefer_b {
                    b
                } else {
                    a
                }
            }
        };
        Some(chosen.clone())
    }

    /// Feeds an outcome to outlier detection; returns the ejection time if the endpoint
    /// was ejected by this outcome.
    pub fn record_outcome(
        &self,
        endpoint: &Endpoint,
        outcome: TryOutcome,
        now: Instant,
    ) -> Option<Duration> {
        let policy = self.outlier.as_ref()?;
        let ejected_now = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        let mut state = endpoint.outlier.lock().ok()?;
        if !state.record(policy, outcome, now) {
            return None;
        }
        if !policy.may_eject(self.endpoints.len(), ejected_now) {
            return None;
        }
        endpoint.ejections_total.fetch_add(1, Ordering::Relaxed);
        Some(state.eject(policy, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::resilience::PoolLimits;

    fn endpoint(port: u16, zone: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(EndpointInfo {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            labels: BTreeMap::new(),
            zone: zone.into(),
            workload: None,
            namespace: "default".into(),
            http2: false,
        }))
    }

    fn cluster(
        algorithm: Algorithm,
        endpoints: Vec<Arc<Endpoint>>,
        outlier: Option<OutlierPolicy>,
    ) -> Cluster {
        Cluster::new(
            ClusterKey {
                service: "s.default.svc.cluster.local".into(),
                subset: None,
            },
            endpoints,
            algorithm,
            Arc::new(ConnectionPool::new(PoolLimits::default())),
            outlier,
            None,
        )
    }

    fn port(e: &Option<Arc<Endpoint>>) -> u16 {
        e.as_ref().map_or(0, |e| e.info.address.port())
    }

    #[test]
    fn round_robin_cycles() {
        let c = cluster(
            Algorithm::RoundRobin,
            vec![endpoint(1, ""), endpoint(2, ""), endpoint(3, "")],
            None,
        );
        let now = Instant::now();
        let ports: Vec<u16> = (0..6)
            .map(|_| port(&c.pick(now, "", &[], (0, 0))))
            .collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn least_request_prefers_idle() {
        let busy = endpoint(1, "");
        let idle = endpoint(2, "");
        busy.in_flight.store(5, Ordering::Relaxed);
        let c = cluster(Algorithm::LeastRequest, vec![busy, idle], None);
        for draw in 0..4 {
            assert_eq!(port(&c.pick(Instant::now(), "", &[], (draw, draw))), 2);
        }
    }

    #[test]
    fn peak_ewma_prefers_fast() {
        let slow = endpoint(1, "");
        let fast = endpoint(2, "");
        let now = Instant::now();
        slow.observe_latency(Duration::from_secs(1), now);
        fast.observe_latency(Duration::from_millis(5), now);
        let c = cluster(Algorithm::PeakEwma, vec![slow, fast], None);
        for draw in 0..4 {
            assert_eq!(port(&c.pick(now, "", &[], (draw, draw))), 2);
        }
    }

    #[test]
    fn retries_avoid_tried_hosts() {
        let c = cluster(
            Algorithm::Random,
            vec![endpoint(1, ""), endpoint(2, "")],
            None,
        );
        let tried = [SocketAddr::from(([127, 0, 0, 1], 1))];
        for draw in 0..4 {
            assert_eq!(port(&c.pick(Instant::now(), "", &tried, (draw, 0))), 2);
        }
    }

    fn od() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: 1,
            consecutive_gateway: 0,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(1),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    #[test]
    fn ejected_hosts_are_skipped_and_all_ejected_is_no_upstream() {
        let a = endpoint(1, "");
        let b = endpoint(2, "");
        let c = cluster(
            Algorithm::RoundRobin,
            vec![a.clone(), b.clone()],
            Some(od()),
        );
        let now = Instant::now();
        assert!(c
            .record_outcome(&a, TryOutcome::Response(500), now)
            .is_some());
        for _ in 0..3 {
            assert_eq!(port(&c.pick(now, "", &[], (0, 0))), 2);
        }
        assert!(c
            .record_outcome(&b, TryOutcome::Response(500), now)
            .is_some());
        assert!(c.pick(now, "", &[], (0, 0)).is_none());
        assert_eq!(
            port(&c.pick(now + Duration::from_secs(2), "", &[], (0, 0))).min(1),
            1
        );
    }

    #[test]
    fn locality_prefers_own_zone_then_fails_over() {
        let west_a = endpoint(1, "us-west1/us-west1-a");
        let west_b = endpoint(2, "us-west1/us-west1-b");
        let c = cluster(
            Algorithm::RoundRobin,
            vec![west_a.clone(), west_b],
            Some(od()),
        );
        let now = Instant::now();
        for _ in 0..4 {
            assert_eq!(port(&c.pick(now, "us-west1/us-west1-a", &[], (0, 0))), 1);
        }
        c.record_outcome(&west_a, TryOutcome::Response(500), now);
        assert_eq!(port(&c.pick(now, "us-west1/us-west1-a", &[], (0, 0))), 2);
    }

    fn affine(key: u64) -> PickOptions {
        PickOptions {
            affinity: Some(key),
            ..Default::default()
        }
    }

    #[test]
    fn retries_leave_the_locality_only_when_allowed() {
        let west_a = endpoint(1, "us-west1/us-west1-a");
        let west_b = endpoint(2, "us-west1/us-west1-b");
        let c = cluster(Algorithm::RoundRobin, vec![west_a, west_b], Some(od()));
        let now = Instant::now();
        let tried = [SocketAddr::from(([127, 0, 0, 1], 1))];
        let local_only = PickOptions::default();
        let remote = PickOptions {
            remote_localities: true,
            ..Default::default()
        };
        let zone = "us-west1/us-west1-a";
        assert_eq!(port(&c.pick_with(now, zone, &tried, (0, 0), local_only)), 1);
        assert_eq!(port(&c.pick_with(now, zone, &tried, (0, 0), remote)), 2);
    }

    #[test]
    fn affinity_keeps_a_key_on_its_endpoint() {
        let endpoints: Vec<_> = (1..=4).map(|p| endpoint(p, "")).collect();
        let c = cluster(Algorithm::Random, endpoints.clone(), None);
        let now = Instant::now();
        let mut chosen = std::collections::BTreeMap::new();
        for key in 0..64u64 {
            let first = port(&c.pick_with(now, "", &[], (key, key), affine(key)));
            for draw in 0..5 {
                assert_eq!(
                    port(&c.pick_with(now, "", &[], (draw, draw), affine(key))),
                    first
                );
            }
            chosen.insert(key, first);
        }
        // Keys spread over every endpoint.
        let used: std::collections::BTreeSet<_> = chosen.values().collect();
        assert_eq!(used.len(), 4);
        // Removing endpoint 4 moves only the keys that were on it.
        let smaller = cluster(Algorithm::Random, endpoints[..3].to_vec(), None);
        for (key, before) in chosen {
            let after = port(&smaller.pick_with(now, "", &[], (0, 0), affine(key)));
            if before != 4 {
                assert_eq!(after, before, "key {key} moved");
            }
        }
    }

    #[test]
    fn locality_patterns() {
        let cases = [
            ("us-west1", "us-west1/us-west1-a", true),
            ("us-west1/*", "us-west1/us-west1-a", true),
            ("us-west1/us-west1-a/*", "us-west1/us-west1-a", true),
            ("us-west1/us-west1-a", "us-west1/us-west1-b", false),
            ("*", "eu/eu-1", true),
            ("us-east1/*", "us-west1/us-west1-a", false),
        ];
        for (pattern, locality, want) in cases {
            assert_eq!(
                locality_matches(pattern, locality),
                want,
                "{pattern} {locality}"
            );
        }
    }

    #[test]
    fn locality_tiers_follow_distribute_and_failover() {
        let eps = [
            endpoint(1, "us-west1/us-west1-a"),
            endpoint(2, "us-west1/us-west1-b"),
            endpoint(3, "us-east1/us-east1-a"),
            endpoint(4, "eu-west1/eu-west1-a"),
        ];
        let distribute = |from: &str, to: &[(&str, u32)]| LocalityRules {
            distribute: vec![LocalityDistribute {
                from: from.into(),
                to: to.iter().map(|(k, w)| (k.to_string(), *w)).collect(),
            }],
            failover: Vec::new(),
        };
        let failover = |pairs: &[(&str, &str)]| LocalityRules {
            distribute: Vec::new(),
            failover: pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        let split_80_20 = distribute(
            "us-west1/us-west1-a/*",
            &[("us-west1/us-west1-a/*", 80), ("us-west1/us-west1-b/*", 20)],
        );
        // (endpoints present, own zone, rules, draw, tiers by port)
        type Case<'a> = (&'a [usize], &'a str, LocalityRules, u64, Vec<Vec<u16>>);
        let cases: Vec<Case> = vec![
            // No rules: zone, region, elsewhere.
            (
                &[0, 1, 2, 3],
                "us-west1/us-west1-a",
                LocalityRules::default(),
                0,
                vec![vec![1], vec![2], vec![3, 4]],
            ),
            // failover us-west1 -> eu-west1 puts eu-west1 before us-east1.
            (
                &[0, 1, 2, 3],
                "us-west1/us-west1-a",
                failover(&[("us-west1", "eu-west1")]),
                0,
                vec![vec![1], vec![2], vec![4], vec![3]],
            ),
            (
                &[2, 3],
                "us-west1/us-west1-a",
                failover(&[("us-west1", "eu-west1")]),
                0,
                vec![vec![4], vec![3]],
            ),
            // Another region's rule does not apply.
            (
                &[2, 3],
                "us-west1/us-west1-a",
                failover(&[("us-east1", "eu-west1")]),
                0,
                vec![vec![3, 4]],
            ),
            // distribute 80/20: draws 0..79 go to zone a, 80..99 to zone b.
            (
                &[0, 1, 2, 3],
                "us-west1/us-west1-a",
                split_80_20.clone(),
                0,
                vec![vec![1], vec![2]],
            ),
            (
                &[0, 1, 2, 3],
                "us-west1/us-west1-a",
                split_80_20.clone(),
                79,
                vec![vec![1], vec![2]],
            ),
            (
                &[0, 1, 2, 3],
                "us-west1/us-west1-a",
                split_80_20.clone(),
                80,
                vec![vec![2], vec![1]],
            ),
            (
                &[0, 1, 2, 3],
                "us-west1/us-west1-a",
                split_80_20.clone(),
                199,
                vec![vec![2], vec![1]],
            ),
            // Zone a gone (ejected): its share goes to zone b.
            (
                &[1, 2, 3],
                "us-west1/us-west1-a",
                split_80_20.clone(),
                0,
                vec![vec![2]],
            ),
            // Nothing in `to` usable: the usual order.
            (
                &[2, 3],
                "us-west1/us-west1-a",
                split_80_20.clone(),
                0,
                vec![vec![3, 4]],
            ),
            // A client outside `from` is not distributed.
            (
                &[0, 1, 2, 3],
                "us-east1/us-east1-a",
                split_80_20,
                0,
                vec![vec![3], vec![1, 2, 4]],
            ),
        ];
        for (present, own, rules, draw, want) in cases {
            let pool: Vec<&Arc<Endpoint>> = present.iter().map(|i| &eps[*i]).collect();
            let got: Vec<Vec<u16>> = locality_tiers(pool, own, &rules, draw)
                .iter()
                .map(|t| t.iter().map(|e| e.info.address.port()).collect())
                .collect();
            assert_eq!(got, want, "{own} {rules:?} draw {draw} over {present:?}");
        }
    }

    #[test]
    fn distribute_shares_traffic_by_weight_through_pick() {
        let eps = vec![
            endpoint(1, "us-west1/us-west1-a"),
            endpoint(2, "us-west1/us-west1-b"),
        ];
        let outlier = OutlierPolicy {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        };
        let c = cluster(Algorithm::RoundRobin, eps, Some(outlier)).with_locality(
            LocalityRules {
                distribute: vec![LocalityDistribute {
                    from: "us-west1/*".into(),
                    to: vec![
                        ("us-west1/us-west1-a".into(), 70),
                        ("us-west1/us-west1-b".into(), 30),
                    ],
                }],
                failover: Vec::new(),
            },
            None,
        );
        let now = Instant::now();
        let mut to_b = 0;
        let mut state = 0x1234_5678_u64;
        for _ in 0..10_000 {
            state = mix((state, 7));
            let draws = (state, mix((state, 11)));
            let e = c.pick(now, "us-west1/us-west1-a", &[], draws).unwrap();
            if e.info.address.port() == 2 {
                to_b += 1;
            }
        }
        assert!(
            (2_700..=3_300).contains(&to_b),
            "{to_b} of 10000 went to zone b"
        );
    }

    #[test]
    fn issued_cookies_carry_ttl_and_path_and_hash_like_the_request_cookie() {
        let cookie = |path: Option<&str>, ttl: u64| IssuedCookie {
            name: "sticky".into(),
            path: path.map(String::from),
            ttl: Duration::from_secs(ttl),
        };
        let cases = [
            (
                cookie(Some("/"), 90),
                "sticky=v; Max-Age=90; Path=/; HttpOnly",
            ),
            (cookie(None, 3600), "sticky=v; Max-Age=3600; HttpOnly"),
            // ttl 0: a session cookie, as in Envoy.
            (cookie(Some("/api"), 0), "sticky=v; Path=/api; HttpOnly"),
        ];
        for (c, want) in cases {
            assert_eq!(c.header("v"), want);
        }
        let value = IssuedCookie::value(0xabc);
        assert_eq!(value, "0000000000000abc");
        let mut h = http::HeaderMap::new();
        let sent = format!("a=1; sticky={value}");
        h.insert("cookie", http::HeaderValue::from_str(&sent).unwrap());
        let ip = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(
            HashPolicy::Cookie("sticky".into()).key(&h, None, ip),
            Some(hash_key(&value))
        );
    }

    #[test]
    fn affinity_keys_come_from_header_cookie_query_or_source() {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", http::HeaderValue::from_static("jason"));
        h.insert("cookie", http::HeaderValue::from_static("a=1; user=jason"));
        let ip = IpAddr::from([127, 0, 0, 1]);
        let header = HashPolicy::Header("x-user".into()).key(&h, None, ip);
        assert!(header.is_some());
        assert_eq!(
            header,
            HashPolicy::Header("x-user".into()).key(&h, None, ip)
        );
        assert!(HashPolicy::Header("x-other".into())
            .key(&h, None, ip)
            .is_none());
        assert!(HashPolicy::Cookie("user".into())
            .key(&h, None, ip)
            .is_some());
        assert!(HashPolicy::Cookie("nope".into())
            .key(&h, None, ip)
            .is_none());
        assert!(HashPolicy::QueryParam("u".into())
            .key(&h, Some("x=1&u=7"), ip)
            .is_some());
        assert!(HashPolicy::QueryParam("u".into())
            .key(&h, None, ip)
            .is_none());
        assert!(HashPolicy::SourceIp.key(&h, None, ip).is_some());
    }

    #[test]
    fn unknown_balancer_is_rejected() {
        assert!(Algorithm::parse("f", "LEAST_CONN").is_ok());
        assert!(Algorithm::parse("f", "FASTEST")
            .unwrap_err()
            .to_string()
            .contains("FASTEST"));
    }
}
