//! sluice-demo-live: the live part of `make demo`. `hack/demo.sh` builds everything,
//! starts the local cluster, installs sluice and the demo app; this program then keeps
//! webapp calling `http://catalog/items` at a steady rate (webapp, a pod, calls catalog by
//! its Service name: cluster DNS, kube-proxy, the apex Service, the sluice-router),
//! releases v2 and a faulty v3, and prints one line per release step with what webapp's
//! calls saw.
//!
//! Traffic goes only to pod IPs in the pod network (10.244.0.0/16): webapp's port 8080,
//! whose answer embeds its call to catalog, and the router's admin port 15000 for its
//! own request counters.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::Client;

#[derive(Debug, Parser)]
#[command(about = "Live view of the sluice demo: load through the router, one line per step")]
struct Args {
    #[arg(long, default_value = "demo")]
    namespace: String,
    #[arg(long, default_value = "catalog-release")]
    canary: String,
    /// The Canary's target Deployment and its container.
    #[arg(long, default_value = "catalog")]
    deployment: String,
    #[arg(long, default_value = "catalog")]
    container: String,
    /// The client Deployment whose pods call the Canary's service by name.
    #[arg(long, default_value = "webapp")]
    client: String,
    #[arg(long, default_value_t = 8080)]
    client_port: u16,
    #[arg(long, default_value = "/")]
    path: String,
    /// Image repository of the demo app; the releases use tags v2 and v3.
    #[arg(long, default_value = "ghcr.io/sluice-dev/sluice-demo")]
    image: String,
    /// Requests per second, spread over the workers.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Longest time a release may take, in seconds.
    #[arg(long, default_value_t = 240)]
    release_timeout: u64,
    #[arg(long, default_value = "kubectl")]
    kubectl: String,
}

/// The first part of each step left out of the measured share, while the router picks
/// up the new weights (it reloads 100 ms after a change; requests are in flight).
const SETTLE: Duration = Duration::from_secs(1);
/// How long traffic is measured after a release ends.
const AFTER: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    /// 2xx without the new field (catalog v1).
    Old,
    /// 2xx with `imageUrl` (catalog v2 and later).
    New,
    /// Any other status.
    Error,
    /// No answer within the client's timeout (2 s), or no connection.
    Silent,
}

impl Answer {
    /// Judges webapp's answer by the call to catalog that it embeds (`upstream_calls[0]`:
    /// its status, or -1 when webapp got no answer).
    fn of_client(body: &str) -> Answer {
        let call = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("upstream_calls")?.get(0).cloned());
        let Some(call) = call else {
            return Answer::Error;
        };
        match call.get("code").and_then(|c| c.as_i64()) {
            Some(200..=299) if call.to_string().contains("imageUrl") => Answer::New,
            Some(200..=299) => Answer::Old,
            Some(-1) | None => Answer::Silent,
            Some(_) => Answer::Error,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    answer: Answer,
}

#[derive(Debug, Default, PartialEq)]
struct Tally {
    total: usize,
    new: usize,
    old: usize,
    /// Both kinds of failure: `Error` and `Silent`.
    errors: usize,
    no_answer: usize,
}

impl Tally {
    fn of(samples: &[Sample], from: Instant, to: Instant) -> Tally {
        let mut t = Tally::default();
        for s in samples.iter().filter(|s| s.at >= from && s.at < to) {
            t.total += 1;
            match s.answer {
                Answer::New => t.new += 1,
                Answer::Old => t.old += 1,
                Answer::Error => t.errors += 1,
                Answer::Silent => {
                    t.errors += 1;
                    t.no_answer += 1;
                }
            }
        }
        t
    }

    /// Percent of the successful answers that came from the new version.
    fn new_share(&self) -> Option<f64> {
        percent(self.new as f64, (self.new + self.old) as f64)
    }

    fn error_share(&self) -> Option<f64> {
        percent(self.errors as f64, self.total as f64)
    }
}

fn percent(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| 100.0 * part / whole)
}

fn fmt_percent(p: Option<f64>) -> String {
    p.map_or_else(|| "-".to_string(), |p| format!("{p:.1}%"))
}

/// Steady load: `workers` loops sharing `rate` requests per second, until stopped or
/// `limit` passes.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: reqwest::Client, url: String, rate: u32, workers: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let limit = Instant::now() + Duration::from_secs(20 * 60);
        let period = Duration::from_secs_f64(f64::from(workers.max(1)) / f64::from(rate.max(1)));
        let tasks = (0..workers.max(1))
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                let (stop, samples) = (stop.clone(), samples.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                        tick.tick().await;
                        let answer = match client.get(&url).send().await {
                            Ok(r) if r.status().is_success() => match r.text().await {
                                Ok(body) => Answer::of_client(&body),
                                Err(_) => Answer::Silent,
                            },
                            Ok(r) => {
                                let _ = r.bytes().await;
                                Answer::Error
                            }
                            Err(_) => Answer::Silent,
                        };
                        let sample = Sample {
                            at: Instant::now(),
                            answer,
                        };
                        samples.lock().expect("samples").push(sample);
                    }
                })
            })
            .collect();
        Load {
            stop,
            samples,
            tasks,
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples").clone()
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The router's own counts by destination workload: (requests, 5xx answers).
type RouterCounts = BTreeMap<String, (f64, f64)>;

const ROUTER_SELECTOR: &str = "app.kubernetes.io/name=sluice-router";

/// Sums `istio_requests_total` of the router's `/metrics` by `destination_workload`.
fn parse_router_counts(text: &str) -> RouterCounts {
    let mut out = RouterCounts::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("istio_requests_total{") else {
            continue;
        };
        let Some(end) = rest.rfind('}') else { continue };
        let labels = parse_labels(&rest[..end]);
        let Some(value) = rest[end + 1..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let workload = labels
            .get("destination_workload")
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let code: u16 = labels
            .get("response_code")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let entry = out.entry(workload).or_insert((0.0, 0.0));
        entry.0 += value;
        if code == 0 || code >= 500 {
            entry.1 += value;
        }
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let name: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if name.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(name.trim().to_string(), value);
    }
    out
}

/// Difference of two snapshots for one workload: (requests, 5xx).
fn counts_delta(before: &RouterCounts, after: &RouterCounts, workload: &str) -> (f64, f64) {
    let b = before.get(workload).copied().unwrap_or_default();
    let a = after.get(workload).copied().unwrap_or_default();
    ((a.0 - b.0).max(0.0), (a.1 - b.1).max(0.0))
}

fn counts_total(before: &RouterCounts, after: &RouterCounts) -> f64 {
    after.keys().map(|w| counts_delta(before, after, w).0).sum()
}

#[derive(Clone, Debug, PartialEq)]
struct Status {
    phase: String,
    weight: i64,
    failed_checks: i64,
    /// `name value ok|FAILED` per metric of the last analysis.
    analysis: Vec<(String, Option<f64>, bool, String)>,
}

impl Status {
    fn key(&self) -> (String, i64, i64) {
        (self.phase.clone(), self.weight, self.failed_checks)
    }

    fn checks(&self) -> String {
        if self.analysis.is_empty() {
            return "-".into();
        }
        self.analysis
            .iter()
            .map(|(name, value, passed, _)| {
                let value = match (name.as_str(), value) {
                    (_, None) => "none".to_string(),
                    ("request-success-rate", Some(v)) => format!("{v:.1}%"),
                    ("request-duration", Some(v)) => format!("{v:.0}ms"),
                    (_, Some(v)) => format!("{v}"),
                };
                let name = name.strip_prefix("request-").unwrap_or(name);
                format!("{name} {value} {}", if *passed { "ok" } else { "FAILED" })
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn failing_messages(&self) -> Vec<String> {
        self.analysis
            .iter()
            .filter(|(_, _, passed, msg)| !passed && !msg.is_empty())
            .map(|(_, _, _, msg)| msg.clone())
            .collect()
    }
}

fn parse_status(obj: &DynamicObject) -> Status {
    let st = &obj.data["status"];
    let analysis = st["lastAnalysis"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or_default().to_string(),
                        m["value"].as_f64(),
                        m["passed"].as_bool().unwrap_or(false),
                        m["message"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Status {
        phase: st["phase"].as_str().unwrap_or("Unknown").to_string(),
        weight: st["canaryWeight"].as_i64().unwrap_or(0),
        failed_checks: st["failedChecks"].as_i64().unwrap_or(0),
        analysis,
    }
}

fn is_terminal(phase: &str) -> bool {
    matches!(phase, "Succeeded" | "Failed")
}

fn mmss(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// Which columns a release shows besides the status.
#[derive(Clone, Copy, PartialEq)]
enum View {
    /// v1 -> v2: the share of answers with `imageUrl`, counted by the client.
    NewShare,
    /// v2 -> v3: both answer with `imageUrl`, so the canary's share and its own error
    /// rate come from the router's counters; errors are what the client saw.
    Faulty,
}

struct Demo {
    args: Args,
    client: Client,
    http: reqwest::Client,
    load: Load,
    started: Instant,
}

impl Demo {
    fn canaries(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("sluice.dev", "v1beta1", "Canary");
        Api::namespaced_with(
            self.client.clone(),
            &self.args.namespace,
            &ApiResource::from_gvk(&gvk),
        )
    }

    async fn status(&self) -> Result<Status> {
        let obj = self
            .canaries()
            .get(&self.args.canary)
            .await
            .with_context(|| format!("reading canary {}", self.args.canary))?;
        Ok(parse_status(&obj))
    }

    /// The counters of every router pod, summed (the router runs several replicas).
    async fn router_counts(&self) -> RouterCounts {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.args.namespace);
        let list = pods
            .list(&ListParams::default().labels(ROUTER_SELECTOR))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let mut total = RouterCounts::new();
        for ip in list
            .into_iter()
            .filter_map(|p| p.status?.pod_ip?.parse::<Ipv4Addr>().ok())
            .filter(|ip| pod_ip_ok(*ip))
        {
            let url = format!("http://{ip}:15000/metrics");
            if let Ok(r) = self.http.get(&url).send().await {
                for (workload, (n, errors)) in
                    parse_router_counts(&r.text().await.unwrap_or_default())
                {
                    let entry = total.entry(workload).or_insert((0.0, 0.0));
                    entry.0 += n;
                    entry.1 += errors;
                }
            }
        }
        total
    }

    async fn primary_image(&self) -> Result<String> {
        let name = format!("{}-primary", self.args.deployment);
        let d = Api::<Deployment>::namespaced(self.client.clone(), &self.args.namespace)
            .get(&name)
            .await
            .with_context(|| format!("reading deployment {name}"))?;
        Ok(d.spec
            .and_then(|s| s.template.spec)
            .and_then(|s| {
                s.containers
                    .into_iter()
                    .find(|c| c.name == self.args.container)
            })
            .and_then(|c| c.image)
            .unwrap_or_default())
    }

    async fn kubectl(&self, args: &[&str]) -> Result<()> {
        let mut shown = vec!["kubectl", "-n", &self.args.namespace];
        shown.extend_from_slice(args);
        let shown: Vec<String> = shown.into_iter().map(shell_quote).collect();
        println!("  $ {}", shown.join(" "));
        let out = tokio::process::Command::new(&self.args.kubectl)
            .arg("-n")
            .arg(&self.args.namespace)
            .args(args)
            .output()
            .await
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn elapsed(&self) -> String {
        mmss(self.started.elapsed())
    }

    /// Waits until webapp's calls reach catalog (the router may not have the routes yet).
    async fn wait_for_answers(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = Instant::now();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let t = Tally::of(&self.load.samples(), now, Instant::now());
            if t.old + t.new > 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}'s calls to catalog gave no successful answer within 60 s \
                     ({} requests in the last second, all failed); see \
                     `kubectl -n {} logs deploy/{}` and `kubectl -n {} logs deploy/sluice-router`",
                    self.args.client,
                    t.total,
                    self.args.namespace,
                    self.args.client,
                    self.args.namespace
                );
            }
        }
    }

    /// Measures `AFTER` of traffic from now.
    async fn measure_after(&self) -> (Tally, RouterCounts, RouterCounts) {
        let before = self.router_counts().await;
        let from = Instant::now();
        tokio::time::sleep(AFTER).await;
        let after = self.router_counts().await;
        (
            Tally::of(&self.load.samples(), from, Instant::now()),
            before,
            after,
        )
    }

    fn header(&self, view: View, new: &str) {
        let cols = match view {
            View::NewShare => format!(
                "{:>8}  {:>9}  {:>7}",
                "REQUESTS",
                format!("FROM-{new}"),
                "ERRORS"
            ),
            View::Faulty => format!(
                "{:>8}  {:>7}  {:>8}  {:>9}",
                "REQUESTS",
                "ERRORS",
                format!("{new}-SHARE"),
                format!("{new}-ERRORS")
            ),
        };
        println!(
            "  {:>5}  {:>5}  {:<12} {:>6}  {:>6}  {cols}  CONTROLLER'S CHECKS",
            "AT", "FOR", "PHASE", "WEIGHT", "FAILED"
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        view: View,
        at: Duration,
        len: Option<Duration>,
        status: &Status,
        checks: &Status,
        tally: &Tally,
        counts: (&RouterCounts, &RouterCounts),
    ) {
        let len = len.map_or_else(|| "".into(), |l| format!("{:.1}s", l.as_secs_f64()));
        let cols = match view {
            View::NewShare => format!(
                "{:>8}  {:>9}  {:>7}",
                tally.total,
                fmt_percent(tally.new_share()),
                fmt_percent(tally.error_share())
            ),
            View::Faulty => {
                let (canary, canary_err) = counts_delta(counts.0, counts.1, &self.args.deployment);
                let all = counts_total(counts.0, counts.1);
                format!(
                    "{:>8}  {:>7}  {:>8}  {:>9}",
                    tally.total,
                    fmt_percent(tally.error_share()),
                    fmt_percent(percent(canary, all)),
                    fmt_percent(percent(canary_err, canary))
                )
            }
        };
        println!(
            "  {:>5}  {:>5}  {:<12} {:>6}  {:>6}  {cols}  {}",
            mmss(at),
            len,
            status.phase,
            status.weight,
            status.failed_checks,
            checks.checks()
        );
        for msg in checks.failing_messages() {
            println!("  {:>5}  {:>5}    ! {msg}", "", "");
        }
    }

    /// Runs `change`, then follows the Canary until `Succeeded` or `Failed`, printing one
    /// line per status (phase, weight, failed checks) when it ends.
    async fn release(&self, view: View, new: &str, change: &[&[&str]]) -> Result<Status> {
        for args in change {
            self.kubectl(args).await?;
        }
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(self.args.release_timeout);
        println!();
        self.header(view, new);
        let mut current: Option<(Status, Instant, RouterCounts)> = None;
        let mut errors = 0;
        loop {
            if Instant::now() > deadline {
                let last = current.map(|c| format!("{} {}", c.0.phase, c.0.weight));
                bail!(
                    "timed out after {} s waiting for the release to finish (last status: {}); \
                     see `kubectl -n {} describe canary {}`",
                    self.args.release_timeout,
                    last.unwrap_or_else(|| "not started".into()),
                    self.args.namespace,
                    self.args.canary
                );
            }
            let status = match self.status().await {
                Ok(s) => {
                    errors = 0;
                    s
                }
                Err(e) => {
                    errors += 1;
                    if errors > 20 {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let started = current.is_some();
            if !started && (is_terminal(&status.phase) || status.phase == "Initialized") {
                if t0.elapsed() > Duration::from_secs(60) {
                    bail!(
                        "the controller did not start the release within 60 s (phase {}); \
                         see `kubectl -n sluice-system logs deploy/sluice-controller`",
                        status.phase
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            if current.as_ref().map(|c| c.0.key()) != Some(status.key()) {
                let now = Instant::now();
                let counts = self.router_counts().await;
                if let Some((prev, since, prev_counts)) = current.take() {
                    let samples = self.load.samples();
                    let tally = Tally::of(&samples, (since + SETTLE).min(now), now);
                    self.row(
                        view,
                        since - t0,
                        Some(now - since),
                        &prev,
                        &status,
                        &tally,
                        (&prev_counts, &counts),
                    );
                }
                if is_terminal(&status.phase) {
                    let (tally, before, after) = self.measure_after().await;
                    self.row(
                        view,
                        now - t0,
                        None,
                        &status,
                        &Status {
                            analysis: vec![],
                            ..status.clone()
                        },
                        &tally,
                        (&before, &after),
                    );
                    return Ok(status);
                }
                current = Some((status, now, counts));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Messages of the Canary's Warning events since `since`, oldest first.
    async fn warning_events(&self, since: Instant) -> Vec<String> {
        use k8s_openapi::jiff::Timestamp;
        let cutoff = std::time::SystemTime::now()
            .checked_sub(since.elapsed() + Duration::from_secs(1))
            .and_then(|t| Timestamp::try_from(t).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let events = Api::<Event>::namespaced(self.client.clone(), &self.args.namespace)
            .list(&ListParams::default().fields(&format!(
                "involvedObject.kind=Canary,involvedObject.name={}",
                self.args.canary
            )))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let mut out: Vec<(Timestamp, String)> = events
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .filter_map(|e| {
                let t = e
                    .last_timestamp
                    .as_ref()
                    .or(e.first_timestamp.as_ref())
                    .map(|t| t.0)
                    .or_else(|| e.event_time.as_ref().map(|t| t.0))?;
                (t >= cutoff).then(|| (t, e.message.unwrap_or_default()))
            })
            .collect();
        out.sort();
        out.into_iter().map(|(_, m)| m).collect()
    }
}

/// Quotes a word for a shell when it needs it, so printed commands can be pasted.
fn shell_quote(word: &str) -> String {
    let plain = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@".contains(c));
    if plain && !word.is_empty() {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r#"'\''"#))
    }
}

fn pod_ip_ok(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 10 && o[1] == 244 && ip != Ipv4Addr::new(10, 244, 0, 1)
}

/// The IP of a ready pod matching `selector`, checked to be in the pod network.
async fn pod_ip(client: &Client, ns: &str, selector: &str, what: &str) -> Result<Ipv4Addr> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .with_context(|| format!("listing the {what} pods"))?;
        for pod in list.items {
            let Some(status) = pod.status else { continue };
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip.and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            if let (true, Some(ip)) = (ready, ip) {
                if !pod_ip_ok(ip) {
                    bail!("the {what} pod has IP {ip}, outside the pod network 10.244.0.0/16; not sending traffic there");
                }
                return Ok(ip);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no ready {what} pod in namespace {ns} within 90 s; see `kubectl -n {ns} get pods`"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let client = Client::try_default()
        .await
        .context("connecting to the cluster (KUBECONFIG)")?;
    let ns = args.namespace.clone();
    pod_ip(&client, &ns, ROUTER_SELECTOR, "sluice-router").await?;
    let client_ip = pod_ip(&client, &ns, &format!("app={}", args.client), &args.client).await?;
    // No proxy from the environment: requests go straight to the pods.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://{client_ip}:{}{}", args.client_port, args.path);
    println!(
        "Load: {} requests/s to {} ({url}), which calls http://catalog/items for each: by the",
        args.rate, args.client
    );
    println!(
        "Service name, through cluster DNS, kube-proxy and the sluice-router, which routes by the"
    );
    println!("VirtualService that the controller writes. An answer with `imageUrl` comes from v2 or later.");
    let load = Load::start(http.clone(), url, args.rate, args.workers);
    let demo = Demo {
        args,
        client,
        http,
        load,
        started,
    };
    let result = run(&demo).await;
    let Demo { load, .. } = demo;
    let total = load.samples().len();
    load.stop().await;
    println!("\nLoad stopped after {total} requests.");
    result
}

const RELEASE_1: &str = "\
The controller scales up the new version beside the primary, then moves 10% more traffic
to it every step while its success rate stays >= 99% and its p99 latency <= 500 ms,
copies it to the primary at 50% (Promoting), routes all traffic back to the primary
(Finalising) and scales the canary down (Succeeded).
FROM-v2 is the share of answers with `imageUrl` measured during each step (its first
second left out); it should follow WEIGHT. While Promoting, the routes stay at 50/50 and
the primary rolls over to v2, so the share climbs; from Finalising on, the primary (now
v2) takes all traffic. The last line is measured in the 3 s after the release.";

const RELEASE_2: &str = "\
Its success rate is far below 99%, so the checks fail; after 2 failed checks (threshold)
the controller routes everything back to the primary (v2) and scales v3 down (Failed).
ERRORS is what the users saw (5xx, or no answer within 2 s). v2 and v3 answers look
alike, so v3-SHARE (v3's share of the requests the router answered) and v3-ERRORS (v3's
own error rate) come from the router's counters (port 15000, /metrics).";

async fn run(demo: &Demo) -> Result<()> {
    let a = &demo.args;
    demo.wait_for_answers().await?;
    let from = Instant::now();
    tokio::time::sleep(AFTER).await;
    let t = Tally::of(&demo.load.samples(), from, Instant::now());
    println!(
        "[{}] Before the release: {} requests in {} s, {} from v2, {} errors: everyone gets v1 (the primary).",
        demo.elapsed(),
        t.total,
        AFTER.as_secs(),
        fmt_percent(t.new_share()),
        fmt_percent(t.error_share())
    );

    // v1 -> v2.
    println!("\n[{}] Release 1: v1 -> v2.\n{RELEASE_1}", demo.elapsed());
    let v2 = format!("{}:v2", a.image);
    let set_v2 = format!("{}={v2}", a.container);
    let status = demo
        .release(
            View::NewShare,
            "v2",
            &[&["set", "image", &format!("deploy/{}", a.deployment), &set_v2]],
        )
        .await?;
    if status.phase != "Succeeded" {
        bail!("release 1 ended {} instead of Succeeded", status.phase);
    }
    let primary = demo.primary_image().await?;
    println!(
        "[{}] v2 promoted: deploy/{}-primary runs {primary}.",
        demo.elapsed(),
        a.deployment
    );
    if primary != v2 {
        bail!("the primary runs {primary}, expected {v2}");
    }

    // v2 -> v3, which fails half of its requests.
    println!(
        "\n[{}] Release 2: v3, which answers 500 to half of its requests (ERROR_RATE=0.5).\n{RELEASE_2}",
        demo.elapsed()
    );
    let v3 = format!("{}:v3", a.image);
    let patch = format!(
        r#"{{"spec":{{"template":{{"spec":{{"containers":[{{"name":"{}","image":"{v3}","env":[{{"name":"ERROR_RATE","value":"0.5"}}]}}]}}}}}}}}"#,
        a.container
    );
    let since = Instant::now();
    let release2_start = demo.router_counts().await;
    let samples_from = Instant::now();
    let status = demo
        .release(
            View::Faulty,
            "v3",
            &[&["patch", &format!("deploy/{}", a.deployment), "-p", &patch]],
        )
        .await?;
    if status.phase != "Failed" {
        bail!("release 2 ended {} instead of Failed", status.phase);
    }
    let end_counts = demo.router_counts().await;
    let t = Tally::of(&demo.load.samples(), samples_from, Instant::now());
    let (v3_requests, v3_errors) = counts_delta(&release2_start, &end_counts, &a.deployment);
    println!(
        "[{}] v3 rolled back after {} failed checks. During its release users saw {} errors in {} requests ({}):",
        demo.elapsed(),
        status.failed_checks,
        t.errors,
        t.total,
        fmt_percent(t.error_share())
    );
    println!(
        "        {} answered with an error status, {} got no answer within 2 s.",
        t.errors - t.no_answer,
        t.no_answer
    );
    println!(
        "        v3 itself answered {v3_requests:.0} requests, {v3_errors:.0} of them with 5xx: measured error rate {}.",
        fmt_percent(percent(v3_errors, v3_requests))
    );
    let events = demo.warning_events(since).await;
    if !events.is_empty() {
        println!("        What the controller said (Warning events):");
        for e in events {
            println!("          {e}");
        }
    }
    let primary = demo.primary_image().await?;
    println!(
        "[{}] The primary still runs v2: deploy/{}-primary image {primary}.",
        demo.elapsed(),
        a.deployment
    );
    if primary != v2 {
        bail!("after the rollback the primary runs {primary}, expected {v2}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_a_window() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let samples = [
            Sample {
                at: at(0),
                answer: Answer::New,
            },
            Sample {
                at: at(100),
                answer: Answer::Old,
            },
            Sample {
                at: at(200),
                answer: Answer::New,
            },
            Sample {
                at: at(300),
                answer: Answer::Silent,
            },
            Sample {
                at: at(400),
                answer: Answer::New,
            },
        ];
        let t = Tally::of(&samples, at(100), at(400));
        assert_eq!(
            t,
            Tally {
                total: 3,
                new: 1,
                old: 1,
                errors: 1,
                no_answer: 1,
            }
        );
        assert_eq!(t.new_share(), Some(50.0));
        assert_eq!(fmt_percent(t.error_share()), "33.3%");
        assert_eq!(Tally::default().new_share(), None);
    }

    #[test]
    fn router_counts_by_workload() {
        let text = r#"# TYPE istio_requests counter
istio_requests_total{reporter="source",source_workload="sluice-router",destination_workload="catalog-primary",destination_service="catalog.demo.svc.cluster.local",response_code="200",response_flags="-"} 90
istio_requests_total{reporter="source",destination_workload="catalog",response_code="200",response_flags="-"} 6
istio_requests_total{reporter="source",destination_workload="catalog",response_code="500",response_flags="-"} 4
istio_requests_total{reporter="source",destination_workload="catalog",response_code="503",response_flags="UH,URX"} 1
istio_request_duration_milliseconds_count{destination_workload="catalog"} 11
"#;
        let after = parse_router_counts(text);
        assert_eq!(after["catalog-primary"], (90.0, 0.0));
        assert_eq!(after["catalog"], (11.0, 5.0));
        let before = RouterCounts::from([("catalog".to_string(), (1.0, 1.0))]);
        assert_eq!(counts_delta(&before, &after, "catalog"), (10.0, 4.0));
        assert_eq!(counts_total(&before, &after), 100.0);
    }

    #[test]
    fn labels_with_escapes_and_commas() {
        let l = parse_labels(r#"a="x,y",b="say \"hi\"", c="""#);
        assert_eq!(l["a"], "x,y");
        assert_eq!(l["b"], "say \"hi\"");
        assert_eq!(l["c"], "");
    }

    #[test]
    fn printed_commands_can_be_pasted() {
        assert_eq!(shell_quote("deploy/catalog"), "deploy/catalog");
        assert_eq!(shell_quote(r#"{"a":1}"#), r#"'{"a":1}'"#);
        assert_eq!(shell_quote("it's"), r#"'it'\''s'"#);
    }

    #[test]
    fn only_pod_network_addresses() {
        assert!(pod_ip_ok(Ipv4Addr::new(10, 244, 0, 7)));
        assert!(!pod_ip_ok(Ipv4Addr::new(10, 244, 0, 1)));
        assert!(!pod_ip_ok(Ipv4Addr::new(10, 96, 0, 10)));
        assert!(!pod_ip_ok(Ipv4Addr::new(127, 0, 0, 1)));
    }

    #[test]
    fn client_answers_are_judged_by_their_upstream_call() {
        let call = |c: &str| format!(r#"{{"name":"webapp","upstream_calls":[{c}]}}"#);
        let cases = [
            (call(r#"{"code":200,"response":[{"id":1}]}"#), Answer::Old),
            (
                call(r#"{"code":200,"response":[{"id":1,"imageUrl":"/a.png"}]}"#),
                Answer::New,
            ),
            (
                call(r#"{"code":500,"response":{"error":"injected error"}}"#),
                Answer::Error,
            ),
            (call(r#"{"code":-1,"error":"timeout"}"#), Answer::Silent),
            (r#"{"name":"webapp"}"#.to_string(), Answer::Error),
            ("not json".to_string(), Answer::Error),
        ];
        for (body, want) in cases {
            assert_eq!(Answer::of_client(&body), want, "{body}");
        }
    }

    #[test]
    fn checks_read_like_the_status() {
        let s = Status {
            phase: "Progressing".into(),
            weight: 10,
            failed_checks: 1,
            analysis: vec![
                (
                    "request-success-rate".into(),
                    Some(51.23),
                    false,
                    "Halt".into(),
                ),
                ("request-duration".into(), Some(3.0), true, String::new()),
            ],
        };
        assert_eq!(s.checks(), "success-rate 51.2% FAILED, duration 3ms ok");
        assert_eq!(s.failing_messages(), vec!["Halt".to_string()]);
    }
}
