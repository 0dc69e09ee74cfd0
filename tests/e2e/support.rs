//! Helpers for end-to-end tests on the local cluster (`hack/cluster.sh up`): kubectl,
//! waiting with deadlines, and a dump of everything useful when a test fails.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const CONTROLLER_NAMESPACE: &str = "sluice-system";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn kubeconfig() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cluster/kubeconfig"))
}

/// Runs kubectl; Ok(stdout) on success, Err(stderr) otherwise.
pub fn kubectl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .map_err(|e| format!("running kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs kubectl and fails the test (with a dump) on error.
pub fn must(ns: &str, args: &[&str]) -> String {
    match kubectl(args) {
        Ok(out) => out,
        Err(err) => fail(ns, &err),
    }
}

/// A JSON merge patch of `resource` (custom resources take no strategic merge).
pub fn merge_patch(ns: &str, resource: &str, patch: &str) {
    must(
        ns,
        &["-n", ns, "patch", resource, "--type=merge", "-p", patch],
    );
}

pub fn apply_yaml(ns: &str, yaml: &str) {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-{ns}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!(
        "{}.yaml",
        Instant::now().elapsed().as_nanos() ^ rand_u64()
    ));
    std::fs::write(&path, yaml).expect("write manifest");
    must(ns, &["apply", "-f", path.to_str().expect("utf-8 path")]);
}

fn rand_u64() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Polls `check` until it returns Some or `timeout` passes; then fails with a dump.
pub fn wait_for<T>(
    ns: &str,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            fail(
                ns,
                &format!("timed out after {timeout:?} waiting for {what}"),
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn jsonpath(ns: &str, resource: &str, path: &str) -> Option<String> {
    kubectl(&["-n", ns, "get", resource, "-o", &format!("jsonpath={path}")]).ok()
}

/// Prints the objects, events and logs that explain a failure, then panics.
/// The messages of the events on the namespace's Canaries, one per line.
pub fn events_of(ns: &str) -> String {
    must(
        ns,
        &[
            "-n",
            ns,
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=Canary",
            "-o",
            "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
        ],
    )
}

pub fn fail(ns: &str, message: &str) -> ! {
    eprintln!("\n===== e2e failure in namespace {ns}: {message}");
    for args in [
        vec!["-n", ns, "get", "canary", "-o", "yaml"],
        vec![
            "-n",
            ns,
            "get",
            "deploy,svc,pods,virtualservice,destinationrule,httproute",
            "-o",
            "wide",
        ],
        vec!["-n", ns, "get", "virtualservice", "-o", "yaml"],
        vec![
            "-n",
            ns,
            "get",
            "events",
            "--sort-by=.metadata.creationTimestamp",
        ],
        vec!["-n", "sluice-system", "get", "pods", "-o", "wide"],
    ] {
        eprintln!("\n--- kubectl {}", args.join(" "));
        match kubectl(&args) {
            Ok(out) => eprintln!("{out}"),
            Err(err) => eprintln!("{err}"),
        }
    }
    // The router's own view: endpoints (local clients only: through a port-forward, as a
    // user would) and request counters.
    let routers = kubectl(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=sluice-router",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{\"\\n\"}{end}",
    ])
    .unwrap_or_default();
    for (pod, ip) in routers.lines().filter_map(|l| l.split_once(' ')) {
        eprintln!("\n--- router {pod} /config/endpoints");
        eprintln!(
            "{}",
            router_admin(ns, pod, "/config/endpoints").unwrap_or_else(|e| e)
        );
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "3",
                &format!("http://{ip}:15000/metrics"),
            ])
            .output();
        if let Ok(out) = out {
            eprintln!("\n--- router {pod} ({ip}) /metrics");
            for line in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
            {
                eprintln!("{line}");
            }
        }
    }
    // Each container's last lines, through the kubelet, as a user would read them.
    for namespace in [CONTROLLER_NAMESPACE, ns] {
        let pods = kubectl(&["-n", namespace, "get", "pods", "-o", "name"]).unwrap_or_default();
        for pod in pods.lines() {
            let args = [
                "-n",
                namespace,
                "logs",
                pod,
                "--all-containers",
                "--prefix",
                "--tail=40",
            ];
            eprintln!("\n--- kubectl {}", args.join(" "));
            match kubectl(&args) {
                Ok(out) => eprintln!("{out}"),
                Err(err) => eprintln!("{err}"),
            }
        }
    }
    panic!("{message}");
}

/// A namespace deleted when the test ends, unless SLUICE_E2E_KEEP is set.
pub struct TestNamespace(pub String);

impl TestNamespace {
    pub fn create(prefix: &str) -> Self {
        let name = format!("{prefix}-{:x}", rand_u64() as u32);
        kubectl(&["create", "namespace", &name]).expect("create namespace");
        TestNamespace(name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("SLUICE_E2E_KEEP").is_none() {
            let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"]);
        }
    }
}

/// GET `path` from a router pod's admin port through `kubectl port-forward` (its
/// `/config/*` views answer local clients only).
pub fn router_admin(ns: &str, pod: &str, path: &str) -> Result<String, String> {
    use std::io::{BufRead, BufReader};
    let mut forward = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(["-n", ns, "port-forward", &format!("pod/{pod}"), ":15000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("kubectl port-forward: {e}"))?;
    let port = forward.stdout.take().and_then(|out| {
        // "Forwarding from 127.0.0.1:40123 -> 15000"
        let line = BufReader::new(out).lines().next()?.ok()?;
        let local = line.split_whitespace().nth(2)?;
        local.rsplit(':').next()?.parse::<u16>().ok()
    });
    let result = match port {
        Some(port) => Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "3",
                &format!("http://127.0.0.1:{port}{path}"),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .map_err(|e| format!("curl: {e}")),
        None => Err("kubectl port-forward did not say its port".into()),
    };
    let _ = forward.kill();
    let _ = forward.wait();
    result
}

/// `IP:port` of a ready pod labelled `app=<app>` on the pod network (waits up to 90 s).
pub fn ready_pod_address(ns: &str, app: &str, port: u16) -> String {
    wait_for(
        ns,
        &format!("a ready {app} pod"),
        Duration::from_secs(90),
        || {
            let out = jsonpath(
            ns,
            "pods",
            &format!("{{range .items[?(@.metadata.labels.app==\"{app}\")]}}{{.status.podIP}} {{.status.conditions[?(@.type==\"Ready\")].status}}{{\"\\n\"}}{{end}}"),
        )?;
            out.lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(ip, ready)| ip.starts_with("10.244.") && *ready == "True")
                .map(|(ip, _)| format!("{ip}:{port}"))
        },
    )
}
