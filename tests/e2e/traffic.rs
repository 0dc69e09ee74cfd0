//! Real traffic for end-to-end releases: a bounded load loop from the host against a pod
//! IP (the sluice-router with the Host of the service, or a client pod such as webapp that
//! calls the service by name), and the status timeline to split it by step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::support::*;

/// One answered request: when, and whether the canary version served it.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    pub ok: bool,
    pub v2: bool,
}

/// How an answer is judged.
#[derive(Clone, Copy, Debug)]
pub enum Judge {
    /// Served by the service itself: a 2xx, from the new version when it holds the marker.
    Direct(&'static str),
    /// A sluice-demo client's answer embedding its upstream call (`upstream_calls[0]`): that
    /// call's status decides, and the marker in it means the new version.
    Upstream(&'static str),
}

impl Judge {
    fn sample(self, status: u16, body: &str) -> Sample {
        let at = Instant::now();
        match self {
            Judge::Direct(marker) => {
                let ok = (200..300).contains(&status);
                Sample {
                    at,
                    ok,
                    v2: ok && body.contains(marker),
                }
            }
            Judge::Upstream(marker) => {
                let call = serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("upstream_calls")?.get(0).cloned());
                let code = call
                    .as_ref()
                    .and_then(|c| c.get("code")?.as_i64())
                    .unwrap_or(-1);
                let ok = (200..300).contains(&status) && (200..300).contains(&code);
                let v2 = ok && call.is_some_and(|c| c.to_string().contains(marker));
                Sample { at, ok, v2 }
            }
        }
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Sends GET `path` with `Host: host` to `addr` from `workers` loops until stopped
    /// (and at most `limit`), counting answers that contain `marker` as the new version.
    pub fn start(
        addr: String,
        host: &str,
        path: &str,
        marker: &'static str,
        workers: usize,
        limit: Duration,
    ) -> Load {
        Load::judged(addr, host, path, Judge::Direct(marker), workers, limit)
    }

    pub fn judged(
        addr: String,
        host: &str,
        path: &str,
        judge: Judge,
        workers: usize,
        limit: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let url = format!("http://{addr}{path}");
        let host = host.to_string();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .expect("client");
                let deadline = Instant::now() + limit;
                let mut tasks = Vec::new();
                for _ in 0..workers {
                    let (client, url, host, s, out) = (
                        client.clone(),
                        url.clone(),
                        host.clone(),
                        s.clone(),
                        out.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                            let res = client.get(&url).header("host", &host).send().await;
                            let sample = match res {
                                Ok(r) => {
                                    let status = r.status().as_u16();
                                    let body = r.text().await.unwrap_or_default();
                                    judge.sample(status, &body)
                                }
                                Err(_) => Sample {
                                    at: Instant::now(),
                                    ok: false,
                                    v2: false,
                                },
                            };
                            out.lock().expect("samples").push(sample);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Load {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples").clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A status line and when it was first seen.
#[derive(Clone, Debug)]
pub struct Step {
    pub at: Instant,
    pub phase: String,
    pub weight: i32,
}

/// Follows the Canary until a terminal phase after a release started.
pub fn timeline(ns: &str, canary: &str, timeout: Duration) -> Vec<Step> {
    let mut steps: Vec<Step> = vec![];
    wait_for(ns, "the release to finish", timeout, || {
        let out = jsonpath(
            ns,
            &format!("canary/{canary}"),
            "{.status.phase} {.status.canaryWeight}",
        )?;
        let mut parts = out.split_whitespace();
        let phase = parts.next()?.to_string();
        let weight: i32 = parts.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        if steps.last().map(|s| (&s.phase, s.weight)) != Some((&phase, weight)) {
            steps.push(Step {
                at: Instant::now(),
                phase: phase.clone(),
                weight,
            });
        }
        let started = steps.iter().any(|s| s.phase == "Progressing");
        (started && (phase == "Succeeded" || phase == "Failed")).then_some(())
    });
    steps
}

/// Share of the new version measured during each Progressing step with traffic, leaving
/// out the first `settle` of each step while the router picks up the new weights.
pub fn measured_split(
    steps: &[Step],
    samples: &[Sample],
    settle: Duration,
) -> Vec<(i32, f64, usize)> {
    let mut out = vec![];
    for (i, step) in steps.iter().enumerate() {
        if step.phase != "Progressing" || step.weight == 0 {
            continue;
        }
        let end = steps.get(i + 1).map(|s| s.at).unwrap_or_else(Instant::now);
        let window: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.ok && s.at >= step.at + settle && s.at < end)
            .collect();
        let v2 = window.iter().filter(|s| s.v2).count();
        let share = if window.is_empty() {
            0.0
        } else {
            100.0 * v2 as f64 / window.len() as f64
        };
        out.push((step.weight, share, window.len()));
    }
    out
}

/// Three standard deviations of a binomial share in percent, plus two points for the
/// requests in flight across a weight change.
pub fn tolerance(weight: i32, n: usize) -> f64 {
    let p = weight as f64 / 100.0;
    300.0 * (p * (1.0 - p) / n.max(1) as f64).sqrt() + 2.0
}

/// Sends `n` requests (4 at a time) and counts (answered with 2xx, containing `marker`).
pub fn count(
    addr: &str,
    host: &str,
    path: &str,
    header: Option<(&str, &str)>,
    marker: &str,
    n: usize,
) -> (usize, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let url = format!("http://{addr}{path}");
        let (mut ok, mut hits) = (0, 0);
        for chunk in (0..n).collect::<Vec<_>>().chunks(4) {
            let calls = chunk.iter().map(|_| {
                let mut req = client.get(&url).header("host", host);
                if let Some((k, v)) = header {
                    req = req.header(k, v);
                }
                async move {
                    let r = req.send().await.ok()?;
                    let success = r.status().is_success();
                    let body = r.text().await.ok()?;
                    Some((success, body))
                }
            });
            for (success, body) in futures::future::join_all(calls).await.into_iter().flatten() {
                if success {
                    ok += 1;
                    if body.contains(marker) {
                        hits += 1;
                    }
                }
            }
        }
        (ok, hits)
    })
}

/// Fails the test unless a release stepped 10, 20, 30, 40, 50 and the share of v2 that
/// `who` measured at each step is within the tolerance of the weight.
pub fn check_split(ns: &str, steps: &[Step], samples: &[Sample], who: &str) {
    let split = measured_split(steps, samples, Duration::from_millis(1500));
    eprintln!("{who}, measured split (weight, v2 %, requests): {split:?}");
    let weights: Vec<i32> = split.iter().map(|s| s.0).collect();
    if weights != [10, 20, 30, 40, 50] {
        fail(ns, &format!("steps {weights:?}, not 10 to 50: {steps:?}"));
    }
    for (weight, share, n) in &split {
        let tol = tolerance(*weight, *n);
        if *n < 50 || (share - *weight as f64).abs() > tol {
            fail(
                ns,
                &format!(
                    "at weight {weight}: {share:.1}% of {who} reached v2 over {n} (tolerance {tol:.1})"
                ),
            );
        }
    }
}

/// Fails the test unless (3 s after promotion) at least 95 of the last 100 answers came
/// from v2.
pub fn check_promoted(ns: &str, load: &Load, who: &str) {
    std::thread::sleep(Duration::from_secs(3));
    let last: Vec<Sample> = load.samples().into_iter().rev().take(100).collect();
    if last.iter().filter(|s| s.v2).count() < 95 {
        fail(
            ns,
            &format!("after promotion fewer than 95 of the last 100 of {who} came from v2"),
        );
    }
}
