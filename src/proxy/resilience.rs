//! Retries, backoff, connection-pool limits (circuit breaking) and outlier detection.
//! The decisions (should this be retried, how long to wait, is this host ejected) are
//! pure functions of their inputs; only `ConnectionPool` touches tokio.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{field}: unknown retry condition {condition:?}")]
    UnknownRetryCondition { field: String, condition: String },
    #[error("{field}: {value} is negative")]
    Negative { field: String, value: i64 },
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::UnknownRetryCondition { .. } => "unknown_retry_condition",
            Error::Negative { .. } => "negative",
        }
    }
}

// === Retries ===

/// What happened to one try, as far as retry and outlier decisions care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryOutcome {
    Response(u16),
    ConnectFailure,
    /// The connection broke before a response (reset, closed early).
    Reset,
    /// The per-try timeout expired.
    Timeout,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryConditions {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub retriable_4xx: bool,
    pub refused_stream: bool,
    pub retriable_status_codes: bool,
    /// Codes from `retriable-status-codes`; bare codes in `retryOn` land here too.
    pub codes: Vec<u16>,
    /// Accepted conditions that never fire here (gRPC statuses, header-based ones), kept
    /// in the order written so the policy prints back as it was given.
    pub not_enforced: Vec<&'static str>,
}

/// The conditions sluice-proxy enforces, in the order [`RetryConditions`] prints them.
const ENFORCED: [&str; 6] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
];

/// Conditions Envoy accepts that cannot be true over HTTP/1.1 without gRPC: accepted and
/// printed back, as Envoy does for non-gRPC responses.
const NOT_ENFORCED: [&str; 8] = [
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
];

impl RetryConditions {
    /// Parses Istio's comma list (`5xx,gateway-error,503`).
    pub fn parse(field: &str, retry_on: &str) -> Result<Self, Error> {
        let mut c = RetryConditions::default();
        for token in retry_on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token {
                "5xx" => c.five_xx = true,
                "gateway-error" => c.gateway_error = true,
                "reset" => c.reset = true,
                "connect-failure" => c.connect_failure = true,
                "retriable-4xx" => c.retriable_4xx = true,
                "refused-stream" => c.refused_stream = true,
                "retriable-status-codes" => c.retriable_status_codes = true,
                other => match (
                    NOT_ENFORCED.into_iter().find(|n| *n == other),
                    other.parse::<u16>(),
                ) {
                    (Some(name), _) => {
                        if !c.not_enforced.contains(&name) {
                            c.not_enforced.push(name);
                        }
                    }
                    (None, Ok(code)) if (100..600).contains(&code) => {
                        c.retriable_status_codes = true;
                        if !c.codes.contains(&code) {
                            c.codes.push(code);
                        }
                    }
                    _ => {
                        return Err(Error::UnknownRetryCondition {
                            field: field.into(),
                            condition: token.into(),
                        })
                    }
                },
            }
        }
        Ok(c)
    }

    fn enforced(&self) -> [bool; 6] {
        [
            self.five_xx,
            self.gateway_error,
            self.reset,
            self.connect_failure,
            self.retriable_4xx,
            self.refused_stream,
        ]
    }

    pub fn should_retry(&self, outcome: TryOutcome) -> bool {
        match outcome {
            TryOutcome::Response(code) => {
                (self.five_xx && (500..600).contains(&code))
                    || (self.gateway_error && matches!(code, 502..=504))
                    || (self.retriable_4xx && code == 409)
                    || (self.retriable_status_codes && self.codes.contains(&code))
            }
            TryOutcome::ConnectFailure => {
                self.connect_failure || self.five_xx || self.gateway_error
            }
            // A reset on HTTP/1.1 is also what a refused stream looks like to us.
            TryOutcome::Reset => self.reset || self.five_xx || self.refused_stream,
            TryOutcome::Timeout => self.five_xx || self.gateway_error,
        }
    }
}

/// Istio's `retryOn` form (`5xx,connect-failure,retriable-status-codes,503`), which
/// [`RetryConditions::parse`] reads back to the same conditions.
impl std::fmt::Display for RetryConditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = ENFORCED
            .iter()
            .zip(self.enforced())
            .filter_map(|(name, on)| on.then_some(*name))
            .chain(self.not_enforced.iter().copied())
            .chain(
                self.retriable_status_codes
                    .then_some("retriable-status-codes"),
            );
        let codes = self.codes.iter().map(u16::to_string);
        let all: Vec<String> = names.map(str::to_string).chain(codes).collect();
        f.write_str(&all.join(","))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio's `attempts`); 0 = off.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub conditions: RetryConditions,
    pub backoff: Backoff,
    /// `retryRemoteLocalities`: retries may go to other localities.
    pub remote_localities: bool,
}

impl RetryPolicy {
    /// Istio's mesh default for routes without `retries`: 2 retries on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`.
    /// Istio 1.24+ lists no retriable code (`EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY`,
    /// on by default, because retrying 503 re-sent non-idempotent requests); `retry_503`
    /// restores the 503 of earlier releases.
    pub fn mesh_default(retry_503: bool) -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            conditions: RetryConditions {
                connect_failure: true,
                refused_stream: true,
                not_enforced: vec!["unavailable", "cancelled"],
                retriable_status_codes: true,
                codes: if retry_503 { vec![503] } else { Vec::new() },
                ..Default::default()
            },
            backoff: Backoff::default(),
            remote_localities: false,
        }
    }

    pub fn off() -> Self {
        RetryPolicy {
            attempts: 0,
            per_try_timeout: None,
            conditions: RetryConditions::default(),
            backoff: Backoff::default(),
            remote_localities: false,
        }
    }

    /// Whether try number `tries_done` (1-based) may be followed by another.
    pub fn allows_retry(&self, tries_done: u32, outcome: TryOutcome) -> bool {
        tries_done <= self.attempts && self.conditions.should_retry(outcome)
    }
}

/// Fully jittered exponential backoff: retry N waits uniform [0, (2^N - 1) * base),
/// the upper bound capped at 10 x base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(25))
    }
}

impl Backoff {
    /// A zero base means no wait at all.
    pub fn new(base: Duration) -> Self {
        Backoff {
            base,
            cap: base * 10,
        }
    }

    /// `retry` is 1 for the first retry; `draw` uniform in [0, 1).
    pub fn delay(&self, retry: u32, draw: f64) -> Duration {
        let factor = (1u64 << retry.min(20)).saturating_sub(1) as f64;
        let upper = self.base.mul_f64(factor).min(self.cap);
        upper.mul_f64(draw.clamp(0.0, 1.0))
    }
}

// === Connection pool (circuit breaking) ===

/// connectionPool limits of one cluster; None = unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_connections: Option<usize>,
    pub max_pending: Option<usize>,
    pub max_requests: Option<usize>,
    pub max_retries: Option<usize>,
    /// 1 = no keep-alive.
    pub max_requests_per_connection: Option<u32>,
}

/// Which limit a request overflowed (Envoy's upstream_cx/rq_pending/rq_retry_overflow).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Overflow {
    Connections,
    Pending,
    Requests,
    Retries,
}

impl Overflow {
    pub fn label(self) -> &'static str {
        match self {
            Overflow::Connections => "connections",
            Overflow::Pending => "pending",
            Overflow::Requests => "requests",
            Overflow::Retries => "retries",
        }
    }
}

/// Enforces a cluster's connectionPool. HTTP/1.1 carries one request per connection at
/// a time, so a connection slot is held for the duration of a request; requests wait
/// for a slot only while fewer than `max_pending` already wait.
#[derive(Debug)]
pub struct ConnectionPool {
    limits: PoolLimits,
    connection_slots: Option<Arc<Semaphore>>,
    pending: AtomicUsize,
    active_requests: AtomicUsize,
    active_retries: AtomicUsize,
    pub overflow_connections: AtomicU64,
    pub overflow_pending: AtomicU64,
    pub overflow_requests: AtomicU64,
    pub overflow_retries: AtomicU64,
}

/// Held while a request is in flight; releases its slots on drop.
#[derive(Debug)]
pub struct PoolGuard {
    pool: Arc<ConnectionPool>,
    _connection: Option<OwnedSemaphorePermit>,
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        self.pool.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held while a retry is in flight.
#[derive(Debug)]
pub struct RetryGuard {
    pool: Arc<ConnectionPool>,
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.pool.active_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionPool {
    pub fn new(limits: PoolLimits) -> Self {
        ConnectionPool {
            connection_slots: limits.max_connections.map(|n| Arc::new(Semaphore::new(n))),
            limits,
            pending: AtomicUsize::new(0),
            active_requests: AtomicUsize::new(0),
            active_retries: AtomicUsize::new(0),
            overflow_connections: AtomicU64::new(0),
            overflow_pending: AtomicU64::new(0),
            overflow_requests: AtomicU64::new(0),
            overflow_retries: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.limits
    }

    pub fn overflow_counts(&self) -> [(Overflow, u64); 4] {
        [
            (
                Overflow::Connections,
                self.overflow_connections.load(Ordering::Relaxed),
            ),
            (
                Overflow::Pending,
                self.overflow_pending.load(Ordering::Relaxed),
            ),
            (
                Overflow::Requests,
                self.overflow_requests.load(Ordering::Relaxed),
            ),
            (
                Overflow::Retries,
                self.overflow_retries.load(Ordering::Relaxed),
            ),
        ]
    }

    fn count(&self, kind: Overflow) {
        let counter = match kind {
            Overflow::Connections => &self.overflow_connections,
            Overflow::Pending => &self.overflow_pending,
            Overflow::Requests => &self.overflow_requests,
            Overflow::Retries => &self.overflow_retries,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Admits a request or says which limit it overflowed (answered locally with 503 UO).
    pub async fn admit(self: &Arc<Self>) -> Result<PoolGuard, Overflow> {
        let active = self.active_requests.fetch_add(1, Ordering::AcqRel);
        // Constructed now so any early return below releases the request slot.
        let mut guard = PoolGuard {
            pool: self.clone(),
            _connection: None,
        };
        if self.limits.max_requests.is_some_and(|max| active >= max) {
            self.count(Overflow::Requests);
            return Err(Overflow::Requests);
        }
        let Some(slots) = &self.connection_slots else {
            return Ok(guard);
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            guard._connection = Some(permit);
            return Ok(guard);
        }
        // Every connection is busy: this request would need a new one beyond the limit.
        self.count(Overflow::Connections);
        let waiting = self.pending.fetch_add(1, Ordering::AcqRel);
        if self.limits.max_pending.is_some_and(|max| waiting >= max) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.count(Overflow::Pending);
            return Err(Overflow::Pending);
        }
        let permit = slots.clone().acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match permit {
            Ok(permit) => {
                guard._connection = Some(permit);
                Ok(guard)
            }
            // The semaphore is never closed; treat it as an overflow rather than panic.
            Err(_) => Err(Overflow::Pending),
        }
    }

    /// Admits one retry (`http.maxRetries` concurrent retries per cluster).
    pub fn admit_retry(self: &Arc<Self>) -> Result<RetryGuard, Overflow> {
        let active = self.active_retries.fetch_add(1, Ordering::AcqRel);
        let guard = RetryGuard { pool: self.clone() };
        if self.limits.max_retries.is_some_and(|max| active >= max) {
            self.count(Overflow::Retries);
            return Err(Overflow::Retries);
        }
        Ok(guard)
    }
}

// === Outlier detection ===

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// 0 = off.
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

/// Envoy caps an ejection at 300 s.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

impl OutlierPolicy {
    /// The n-th ejection lasts n x base, capped.
    pub fn ejection_time(&self, nth: u32) -> Duration {
        self.base_ejection
            .saturating_mul(nth.max(1))
            .min(MAX_EJECTION.max(self.base_ejection))
    }

    /// Whether one more host may be ejected: at most max% of hosts, but at least one.
    pub fn may_eject(&self, hosts: usize, ejected: usize) -> bool {
        let allowed = (hosts * self.max_ejection_percent as usize) / 100;
        ejected < allowed.max(1)
    }
}

/// Per-endpoint outlier bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    last_ejected_at: Option<Instant>,
}

impl OutlierState {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Records one outcome. Returns true when the host should now be ejected (the
    /// caller checks the max-ejection budget and then calls `eject`).
    pub fn record(&mut self, policy: &OutlierPolicy, outcome: TryOutcome, now: Instant) -> bool {
        if self.ejected_until.is_some_and(|until| now >= until) {
            // Back from ejection: counting starts over.
            self.ejected_until = None;
            self.consecutive_5xx = 0;
            self.consecutive_gateway = 0;
        }
        // A long healthy stretch after the last ejection forgets the multiplier.
        if let Some(last) = self.last_ejected_at {
            if self.ejected_until.is_none()
                && now.duration_since(last)
                    > policy.ejection_time(self.ejections) + policy.interval * 2
            {
                self.ejections = 0;
                self.last_ejected_at = None;
            }
        }
        let (is_5xx, is_gateway) = match outcome {
            TryOutcome::Response(code) => ((500..600).contains(&code), matches!(code, 502..=504)),
            // Envoy counts connect failures, resets and timeouts as gateway errors (5xx).
            TryOutcome::ConnectFailure | TryOutcome::Reset | TryOutcome::Timeout => (true, true),
        };
        self.consecutive_5xx = if is_5xx { self.consecutive_5xx + 1 } else { 0 };
        self.consecutive_gateway = if is_gateway {
            self.consecutive_gateway + 1
        } else {
            0
        };
        if self.is_ejected(now) {
            return false;
        }
        (policy.consecutive_5xx > 0 && self.consecutive_5xx >= policy.consecutive_5xx)
            || (policy.consecutive_gateway > 0
                && self.consecutive_gateway >= policy.consecutive_gateway)
    }

    pub fn eject(&mut self, policy: &OutlierPolicy, now: Instant) -> Duration {
        self.ejections += 1;
        let time = policy.ejection_time(self.ejections);
        self.ejected_until = Some(now + time);
        self.last_ejected_at = Some(now);
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions_table() {
        use TryOutcome::*;
        // (retryOn, outcome, retried)
        let cases = [
            ("5xx", Response(500), true),
            ("5xx", Response(503), true),
            ("5xx", Response(408), false),
            ("5xx", Reset, true),
            ("5xx", ConnectFailure, true),
            ("gateway-error", Response(500), false),
            ("gateway-error", Response(502), true),
            ("gateway-error", Response(504), true),
            ("retriable-4xx", Response(409), true),
            ("retriable-4xx", Response(408), false),
            ("retriable-status-codes,408", Response(408), true),
            ("408,400", Response(400), true),
            ("408", Response(500), false),
            ("connect-failure", ConnectFailure, true),
            ("connect-failure", Response(503), false),
            ("reset", Reset, true),
            ("refused-stream", Reset, true),
            ("", Response(503), false),
        ];
        for (retry_on, outcome, want) in cases {
            let c = RetryConditions::parse("retryOn", retry_on).unwrap();
            assert_eq!(c.should_retry(outcome), want, "{retry_on} {outcome:?}");
        }
    }

    #[test]
    fn unknown_retry_condition_is_named() {
        let err = RetryConditions::parse("http[0].retries.retryOn", "5xx,bogus").unwrap_err();
        assert_eq!(
            err.to_string(),
            "http[0].retries.retryOn: unknown retry condition \"bogus\""
        );
    }

    #[test]
    fn attempts_count_retries_not_tries() {
        let p = RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            conditions: RetryConditions::parse("f", "5xx").unwrap(),
            backoff: Backoff::default(),
            remote_localities: false,
        };
        let o = TryOutcome::Response(503);
        assert!(p.allows_retry(1, o));
        assert!(p.allows_retry(2, o));
        assert!(!p.allows_retry(3, o));
        assert!(!RetryPolicy::off().allows_retry(1, o));
    }

    #[test]
    fn the_mesh_default_retries_503_only_when_asked() {
        let (current, before_1_24) = (
            RetryPolicy::mesh_default(false),
            RetryPolicy::mesh_default(true),
        );
        let cases = [
            (TryOutcome::Response(503), false, true),
            (TryOutcome::Response(500), false, false),
            (TryOutcome::Response(502), false, false),
            (TryOutcome::ConnectFailure, true, true),
            (TryOutcome::Reset, true, true),
            (TryOutcome::Timeout, false, false),
        ];
        for (outcome, want_current, want_before) in cases {
            assert_eq!(
                current.allows_retry(1, outcome),
                want_current,
                "{outcome:?}"
            );
            assert_eq!(
                before_1_24.allows_retry(1, outcome),
                want_before,
                "{outcome:?}"
            );
        }
        assert!(!before_1_24.allows_retry(3, TryOutcome::Response(503)));
        assert_eq!(
            current.conditions.to_string(),
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        );
        assert_eq!(
            before_1_24.conditions.to_string(),
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503"
        );
    }

    #[test]
    fn retry_conditions_print_as_istio_writes_them_and_read_back() {
        let cases = [
            ("", ""),
            ("5xx", "5xx"),
            ("connect-failure,5xx", "5xx,connect-failure"),
            (
                "gateway-error, 503 ,409",
                "gateway-error,retriable-status-codes,503,409",
            ),
            ("unavailable,reset,unavailable", "reset,unavailable"),
            (
                "retriable-status-codes,503,503",
                "retriable-status-codes,503",
            ),
            (
                "retriable-4xx,refused-stream,deadline-exceeded",
                "retriable-4xx,refused-stream,deadline-exceeded",
            ),
        ];
        for (written, printed) in cases {
            let c = RetryConditions::parse("retryOn", written).unwrap();
            assert_eq!(c.to_string(), printed, "{written:?}");
            assert_eq!(
                RetryConditions::parse("retryOn", printed).unwrap(),
                c,
                "{written:?}"
            );
        }
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let b = Backoff::default();
        // Upper bounds: 25, 75, 175, 250 (cap), 250 ms.
        let uppers: Vec<u128> = (1..=5).map(|n| b.delay(n, 1.0).as_millis()).collect();
        assert_eq!(uppers, [25, 75, 175, 250, 250]);
        assert_eq!(b.delay(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay(2, 0.5), Duration::from_micros(37_500));
    }

    fn outlier_policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: 2,
            consecutive_gateway: 0,
            interval: Duration::from_secs(5),
            base_ejection: Duration::from_secs(5),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    #[test]
    fn consecutive_errors_eject_and_the_host_returns() {
        let p = outlier_policy();
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        assert!(!s.record(&p, TryOutcome::Response(500), t0));
        assert!(!s.record(&p, TryOutcome::Response(200), t0));
        assert!(!s.record(&p, TryOutcome::Response(500), t0));
        assert!(s.record(&p, TryOutcome::Response(503), t0));
        assert_eq!(s.eject(&p, t0), Duration::from_secs(5));
        assert!(s.is_ejected(t0 + Duration::from_secs(4)));
        assert!(!s.is_ejected(t0 + Duration::from_secs(5)));
        // Second ejection lasts twice as long.
        let t1 = t0 + Duration::from_secs(6);
        s.record(&p, TryOutcome::Response(500), t1);
        assert!(s.record(&p, TryOutcome::Response(500), t1));
        assert_eq!(s.eject(&p, t1), Duration::from_secs(10));
    }

    #[test]
    fn ejection_time_is_capped_and_budget_keeps_one() {
        let p = OutlierPolicy {
            max_ejection_percent: 10,
            ..outlier_policy()
        };
        assert_eq!(p.ejection_time(100), MAX_EJECTION);
        assert!(p.may_eject(3, 0));
        assert!(!p.may_eject(3, 1));
        assert!(p.may_eject(20, 1));
        assert!(!p.may_eject(20, 2));
    }

    #[tokio::test]
    async fn pool_overflows_when_pending_is_full() {
        let pool = Arc::new(ConnectionPool::new(PoolLimits {
            max_connections: Some(1),
            max_pending: Some(1),
            ..Default::default()
        }));
        let first = pool.admit().await.unwrap();
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.admit().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        while pool.pending.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.admit().await.unwrap_err(), Overflow::Pending);
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(pool.overflow_pending.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn pool_max_requests_rejects_at_once() {
        let pool = Arc::new(ConnectionPool::new(PoolLimits {
            max_requests: Some(1),
            ..Default::default()
        }));
        let _first = pool.admit().await.unwrap();
        assert_eq!(pool.admit().await.unwrap_err(), Overflow::Requests);
        drop(_first);
        assert!(pool.admit().await.is_ok());
    }
}
