//! The built-in load generator (`type: load`): paced requests over keep-alive connections.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::payload::duration_field;
use super::Error;

const DEFAULT_RPS: f64 = 10.0;
const DEFAULT_DURATION: Duration = Duration::from_secs(60);
const DEFAULT_CONCURRENCY: usize = 4;
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RPS: f64 = 10_000.0;
const MAX_CONCURRENCY: usize = 1_000;
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A load run read from the hook's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadSpec {
    pub url: reqwest::Url,
    pub method: Method,
    pub rps: f64,
    pub duration: Duration,
    pub concurrency: usize,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<String>,
    pub request_timeout: Duration,
}

fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidMetadata {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl LoadSpec {
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<LoadSpec, Error> {
        let raw_url =
            metadata
                .get("url")
                .filter(|u| !u.trim().is_empty())
                .ok_or(Error::MissingMetadata {
                    key: "url",
                    kind: "load",
                })?;
        let url = reqwest::Url::parse(raw_url.trim())
            .map_err(|e| invalid("url", raw_url, e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid("url", raw_url, "expected http://host[:port]/path"));
        }
        let rps = match metadata.get("rps") {
            None => DEFAULT_RPS,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(r) if r > 0.0 && r <= MAX_RPS => r,
                _ => {
                    return Err(invalid(
                        "rps",
                        v,
                        format!("expected a number above 0, at most {MAX_RPS}"),
                    ))
                }
            },
        };
        let concurrency = match metadata.get("concurrency") {
            None => DEFAULT_CONCURRENCY,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(c) if (1..=MAX_CONCURRENCY).contains(&c) => c,
                _ => {
                    return Err(invalid(
                        "concurrency",
                        v,
                        format!("expected 1 to {MAX_CONCURRENCY}"),
                    ))
                }
            },
        };
        let duration = duration_field(metadata, "duration", DEFAULT_DURATION)?;
        if duration > MAX_DURATION {
            return Err(invalid("duration", &metadata["duration"], "at most 24h"));
        }
        let method = match metadata.get("method") {
            None => Method::GET,
            Some(m) => Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| invalid("method", m, "not an HTTP method"))?,
        };
        let headers = match metadata.get("headers") {
            None => Vec::new(),
            Some(text) => parse_headers(text)?,
        };
        Ok(LoadSpec {
            url,
            method,
            rps,
            duration,
            concurrency,
            headers,
            body: metadata.get("body").cloned(),
            request_timeout: duration_field(metadata, "requestTimeout", DEFAULT_REQUEST_TIMEOUT)?,
        })
    }
}

/// `Name: value` lines; blank lines are skipped.
fn parse_headers(text: &str) -> Result<Vec<(HeaderName, HeaderValue)>, Error> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid("headers", line, "expected `Name: value` lines"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| invalid("headers", line, "invalid header name"))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| invalid("headers", line, "invalid header value"))?;
            Ok((name, value))
        })
        .collect()
}

/// When each request of a run is due, as offsets from the run's start: one every
/// `1/rps`, none at or after `duration`. A sender that fell behind (all connections busy)
/// sends one request at once and then resumes the spacing from there, so being late
/// never turns into a burst.
#[derive(Clone, Debug)]
pub struct Pacer {
    rps: f64,
    period: Duration,
    end: Duration,
    /// Due times are `anchor + index / rps`; computed from the index so rounding does
    /// not accumulate over a long run.
    anchor: Duration,
    index: u64,
}

impl Pacer {
    pub fn new(rps: f64, duration: Duration) -> Pacer {
        Pacer {
            rps,
            period: Duration::from_secs_f64(1.0 / rps),
            end: duration,
            anchor: Duration::ZERO,
            index: 0,
        }
    }

    /// The offset at which the next request is due, given the time now, or `None` when
    /// the run is over.
    pub fn next(&mut self, now: Duration) -> Option<Duration> {
        let mut due = self.anchor + Duration::from_secs_f64(self.index as f64 / self.rps);
        if now >= due + self.period {
            // A whole slot was missed: send now and space the rest from here.
            self.anchor = now;
            self.index = 0;
            due = now;
        }
        if due >= self.end || now >= self.end {
            return None;
        }
        self.index += 1;
        Some(due)
    }
}

/// Counters of one canary's load, over all its runs.
#[derive(Default, Debug)]
pub struct LoadCounters {
    pub requests: AtomicU64,
    /// Responses by status class: index 0 = 1xx .. 4 = 5xx.
    pub classes: [AtomicU64; 5],
    /// Requests without a response: connection errors and timeouts.
    pub errors: AtomicU64,
    pub runs: AtomicU64,
    pub running: AtomicI64,
}

impl LoadCounters {
    fn record(&self, outcome: Result<u16, ()>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(status) => {
                let class = (usize::from(status / 100)).clamp(1, 5) - 1;
                self.classes[class].fetch_add(1, Ordering::Relaxed);
            }
            Err(()) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn summary(&self) -> String {
        let c = |i: usize| self.classes[i].load(Ordering::Relaxed);
        format!(
            "requests={} 2xx={} 3xx={} 4xx={} 5xx={} errors={}",
            self.requests.load(Ordering::Relaxed),
            c(1),
            c(2),
            c(3),
            c(4),
            self.errors.load(Ordering::Relaxed)
        )
    }
}

/// Every canary's counters, keyed by (namespace, name).
#[derive(Default)]
pub struct LoadStats {
    by_canary: parking_lot::Mutex<BTreeMap<(String, String), Arc<LoadCounters>>>,
}

impl LoadStats {
    pub fn counters(&self, namespace: &str, name: &str) -> Arc<LoadCounters> {
        self.by_canary
            .lock()
            .entry((namespace.to_string(), name.to_string()))
            .or_default()
            .clone()
    }

    /// Prometheus text exposition of all counters.
    pub fn render(&self, out: &mut String) {
        let all: Vec<_> = self
            .by_canary
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let families: [(&str, &str, &str); 5] = [
            (
                "sluice_loadtester_requests_total",
                "counter",
                "Requests sent by the load generator",
            ),
            (
                "sluice_loadtester_responses_total",
                "counter",
                "Responses received, by status class",
            ),
            (
                "sluice_loadtester_errors_total",
                "counter",
                "Requests without a response (connection errors, timeouts)",
            ),
            (
                "sluice_loadtester_load_runs_total",
                "counter",
                "Load runs started",
            ),
            (
                "sluice_loadtester_load_running",
                "gauge",
                "Load runs in progress",
            ),
        ];
        for (metric, kind, help) in families {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for ((namespace, name), c) in &all {
                let labels = format!(
                    "namespace=\"{}\",name=\"{}\"",
                    escape(namespace),
                    escape(name)
                );
                match metric {
                    "sluice_loadtester_responses_total" => {
                        for (i, counter) in c.classes.iter().enumerate() {
                            let value = counter.load(Ordering::Relaxed);
                            let _ =
                                writeln!(out, "{metric}{{{labels},class=\"{}xx\"}} {value}", i + 1);
                        }
                    }
                    _ => {
                        let value = match metric {
                            "sluice_loadtester_requests_total" => {
                                c.requests.load(Ordering::Relaxed) as i64
                            }
                            "sluice_loadtester_errors_total" => {
                                c.errors.load(Ordering::Relaxed) as i64
                            }
                            "sluice_loadtester_load_runs_total" => {
                                c.runs.load(Ordering::Relaxed) as i64
                            }
                            _ => c.running.load(Ordering::Relaxed),
                        };
                        let _ = writeln!(out, "{metric}{{{labels}}} {value}");
                    }
                }
            }
        }
    }
}

pub(super) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Runs one load run until its duration has passed or `shutdown` turns true.
pub(super) async fn run(
    spec: LoadSpec,
    canary: String,
    totals: Arc<LoadCounters>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let client = reqwest::Client::builder()
        // Targets are in-cluster services; a proxy from the environment would misroute.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(spec.concurrency)
        .timeout(spec.request_timeout)
        .build()
        .map_err(|e| Error::Client(e.to_string()))?;
    totals.runs.fetch_add(1, Ordering::Relaxed);
    totals.running.fetch_add(1, Ordering::Relaxed);
    let this_run = Arc::new(LoadCounters::default());
    tracing::info!(%canary, url = %spec.url, rps = spec.rps, duration = ?spec.duration, concurrency = spec.concurrency, "load started");
    let permits = Arc::new(Semaphore::new(spec.concurrency));
    let mut inflight = JoinSet::new();
    let mut pacer = Pacer::new(spec.rps, spec.duration);
    let start = Instant::now();
    let mut cancelled = false;
    while let Some(due) = pacer.next(start.elapsed()) {
        let permit = tokio::select! {
            permit = async {
                tokio::time::sleep_until(start + due).await;
                permits.clone().acquire_owned().await
            } => permit,
            _ = super::tasks::cancelled(&mut shutdown) => { cancelled = true; break; }
        };
        let Ok(permit) = permit else { break };
        while inflight.try_join_next().is_some() {}
        let request = build_request(&client, &spec);
        let (totals, this_run) = (totals.clone(), this_run.clone());
        inflight.spawn(async move {
            let outcome = match request.send().await {
                // Read the body so the connection goes back to the pool.
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    while let Ok(Some(_)) = response.chunk().await {}
                    Ok(status)
                }
                Err(err) => {
                    tracing::debug!(error = %err, "load request failed");
                    Err(())
                }
            };
            totals.record(outcome);
            this_run.record(outcome);
            drop(permit);
        });
    }
    if cancelled {
        inflight.abort_all();
    }
    while inflight.join_next().await.is_some() {}
    totals.running.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(%canary, url = %spec.url, cancelled, run = %this_run.summary(), total = %totals.summary(), "load finished");
    Ok(())
}

fn build_request(client: &reqwest::Client, spec: &LoadSpec) -> reqwest::RequestBuilder {
    let mut request = client.request(spec.method.clone(), spec.url.clone());
    for (name, value) in &spec.headers {
        request = request.header(name, value);
    }
    if let Some(body) = &spec.body {
        request = request.body(body.clone());
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_load_specs() {
        let spec =
            LoadSpec::from_metadata(&meta(&[("url", "http://podinfo-canary.test/")])).unwrap();
        assert_eq!(
            (
                spec.method.clone(),
                spec.rps,
                spec.duration,
                spec.concurrency,
                spec.headers.len(),
                spec.body.clone()
            ),
            (Method::GET, 10.0, Duration::from_secs(60), 4, 0, None)
        );
        let spec = LoadSpec::from_metadata(&meta(&[
            ("url", "http://127.0.0.1:9898/api"),
            ("rps", "2.5"),
            ("duration", "30s"),
            ("concurrency", "8"),
            ("method", "post"),
            (
                "headers",
                "X-Canary: insider\n\nContent-Type: application/json\n",
            ),
            ("body", "{}"),
            ("requestTimeout", "2s"),
        ]))
        .unwrap();
        assert_eq!(
            (spec.rps, spec.duration, spec.concurrency),
            (2.5, Duration::from_secs(30), 8)
        );
        assert_eq!(spec.method, Method::POST);
        assert_eq!(spec.headers[0].0.as_str(), "x-canary");
        assert_eq!(spec.headers[1].1, "application/json");
        assert_eq!(
            (spec.body.as_deref(), spec.request_timeout),
            (Some("{}"), Duration::from_secs(2))
        );

        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "metadata.url is required"),
            (&[("url", "podinfo:9898")], "invalid metadata.url"),
            (&[("url", "ftp://x/")], "invalid metadata.url"),
            (
                &[("url", "http://x/"), ("rps", "0")],
                "invalid metadata.rps",
            ),
            (
                &[("url", "http://x/"), ("rps", "fast")],
                "invalid metadata.rps",
            ),
            (
                &[("url", "http://x/"), ("rps", "1e9")],
                "invalid metadata.rps",
            ),
            (
                &[("url", "http://x/"), ("concurrency", "0")],
                "invalid metadata.concurrency",
            ),
            (
                &[("url", "http://x/"), ("duration", "1")],
                "invalid metadata.duration",
            ),
            (&[("url", "http://x/"), ("duration", "48h")], "at most 24h"),
            (
                &[("url", "http://x/"), ("method", "GE T")],
                "invalid metadata.method",
            ),
            (
                &[("url", "http://x/"), ("headers", "no colon")],
                "invalid metadata.headers",
            ),
            (
                &[("url", "http://x/"), ("headers", "Bad Name: v")],
                "invalid header name",
            ),
        ];
        for (pairs, want) in cases {
            let err = LoadSpec::from_metadata(&meta(pairs)).unwrap_err();
            assert!(err.to_string().contains(want), "{pairs:?}: {err}");
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
        }
    }

    /// Runs the pacer with a sender that takes `send_time(i)` to hand off request `i`.
    fn simulate(rps: f64, secs: u64, send_time: impl Fn(usize) -> Duration) -> Vec<Duration> {
        let mut pacer = Pacer::new(rps, Duration::from_secs(secs));
        let mut now = Duration::ZERO;
        let mut sent = Vec::new();
        while let Some(due) = pacer.next(now) {
            now = now.max(due) + send_time(sent.len());
            sent.push(now - send_time(sent.len()));
        }
        sent
    }

    #[test]
    fn pacing_schedule() {
        let ms = Duration::from_millis;
        // (rps, seconds, handoff delay of request i, expected count, smallest spacing)
        type Delay = fn(usize) -> Duration;
        let cases: &[(f64, u64, Delay, usize, Duration)] = &[
            (10.0, 60, |_| Duration::ZERO, 600, ms(100)),
            (20.0, 2, |_| Duration::ZERO, 40, ms(50)),
            (0.5, 10, |_| Duration::ZERO, 5, ms(2000)),
            (3.0, 1, |_| Duration::ZERO, 3, ms(333)),
            // A stall of 1 s at request 5: no burst afterwards, fewer requests in total.
            (
                10.0,
                3,
                |i| {
                    if i == 5 {
                        Duration::from_secs(1)
                    } else {
                        Duration::ZERO
                    }
                },
                21,
                ms(100),
            ),
        ];
        for (rps, secs, delay, count, spacing) in cases {
            let sent = simulate(*rps, *secs, delay);
            assert_eq!(sent.len(), *count, "rps {rps} for {secs}s");
            assert_eq!(sent[0], Duration::ZERO);
            assert!(sent.iter().all(|t| *t < Duration::from_secs(*secs)));
            // After the stall the first send is immediate, then spacing holds.
            let min_gap = sent
                .windows(2)
                .enumerate()
                .filter(|(i, _)| *i != 5)
                .map(|(_, w)| w[1] - w[0])
                .min()
                .unwrap();
            assert!(min_gap >= *spacing, "rps {rps}: gap {min_gap:?}");
        }
    }

    #[test]
    fn pacer_stops_when_late_past_the_end() {
        let mut pacer = Pacer::new(1.0, Duration::from_secs(2));
        assert_eq!(pacer.next(Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(pacer.next(Duration::from_secs(3)), None);
    }

    #[test]
    fn counters_render_as_prometheus_text() {
        let stats = LoadStats::default();
        let c = stats.counters("test", "podinfo");
        c.record(Ok(200));
        c.record(Ok(204));
        c.record(Ok(503));
        c.record(Ok(302));
        c.record(Err(()));
        let mut out = String::new();
        stats.render(&mut out);
        for line in [
            "sluice_loadtester_requests_total{namespace=\"test\",name=\"podinfo\"} 5",
            "sluice_loadtester_responses_total{namespace=\"test\",name=\"podinfo\",class=\"2xx\"} 2",
            "sluice_loadtester_responses_total{namespace=\"test\",name=\"podinfo\",class=\"3xx\"} 1",
            "sluice_loadtester_responses_total{namespace=\"test\",name=\"podinfo\",class=\"5xx\"} 1",
            "sluice_loadtester_errors_total{namespace=\"test\",name=\"podinfo\"} 1",
            "# TYPE sluice_loadtester_load_running gauge",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
