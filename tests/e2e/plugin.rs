//! `kubectl sluice` against real releases: get (and -w), pause/resume, promote, abort,
//! retry, and the exit codes of `status --timeout`.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::support::*;
use super::{app_yaml, initialize, install_controller, primary_version, status_line};

const CANARY: &str = "catalog-release";

fn plugin(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-sluice"));
    cmd.args(["-n", ns])
        .args(args)
        .env("KUBECONFIG", kubeconfig());
    cmd
}

fn run(ns: &str, args: &[&str]) -> Output {
    plugin(ns, args).output().expect("kubectl-sluice runs")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the plugin and fails the test (with a dump) unless it exits with `code`.
pub(super) fn expect_exit(ns: &str, args: &[&str], code: i32) -> String {
    let out = run(ns, args);
    if out.status.code() != Some(code) {
        fail(
            ns,
            &format!(
                "kubectl sluice {} should exit {code}: {}",
                args.join(" "),
                text(&out)
            ),
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spawn(ns: &str, args: &[&str]) -> Child {
    plugin(ns, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl-sluice starts")
}

fn weight(ns: &str) -> i32 {
    status_line(ns).map(|(_, w)| w).unwrap_or(-1)
}

fn applied(ns: &str) -> String {
    jsonpath(ns, &format!("canary/{CANARY}"), "{.status.lastAppliedSpec}").unwrap_or_default()
}

fn condition(ns: &str, type_: &str) -> String {
    jsonpath(
        ns,
        &format!("canary/{CANARY}"),
        &format!("{{.status.conditions[?(@.type==\"{type_}\")].status}}"),
    )
    .unwrap_or_default()
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn plugin_steers_releases() {
    install_controller();
    let ns = TestNamespace::create("e2e-plugin");
    let ns = ns.0.as_str();
    initialize(ns, "3s", 60);

    // Initialized: nothing to release. A Canary that does not exist is an error.
    let out = expect_exit(ns, &["status", CANARY, "--timeout", "20s"], 0);
    assert!(out.contains("nothing to release"), "{out}");
    expect_exit(ns, &["status", "no-such-canary", "--timeout", "5s"], 3);

    // v2 starts; pause holds its weight across several intervals.
    must(
        ns,
        &["-n", ns, "set", "env", "deploy/catalog", "VERSION=v2"],
    );
    wait_for(ns, "the first step", Duration::from_secs(90), || {
        let (phase, w) = status_line(ns)?;
        (phase == "Progressing" && w >= 10).then_some(())
    });
    let out = expect_exit(ns, &["pause", CANARY], 0);
    assert!(out.contains("paused"), "{out}");
    wait_for(ns, "the Paused condition", Duration::from_secs(20), || {
        (condition(ns, "Paused") == "True").then_some(())
    });
    let held = weight(ns);
    std::thread::sleep(Duration::from_secs(10));
    let (phase, now) = status_line(ns).unwrap_or_default();
    if phase != "Progressing" || now != held {
        fail(
            ns,
            &format!("paused at weight {held}, 10s later {phase} {now}"),
        );
    }
    // The tree shows the held weight in the status and in the routes.
    let tree = expect_exit(ns, &["get", CANARY], 0);
    eprintln!("kubectl sluice get {CANARY}:\n{tree}");
    for want in [
        format!("Canary/{CANARY}  Progressing  weight {held}  "),
        "[paused]".to_string(),
        "Deployment/catalog-primary  primary  ready 2/2".to_string(),
        "VirtualService/catalog".to_string(),
        format!("catalog-primary {} catalog-canary {held}", 100 - held),
    ] {
        if !tree.contains(&want) {
            fail(ns, &format!("{want:?} missing from the tree:\n{tree}"));
        }
    }
    // Without a name: every Canary of the namespace.
    let all = expect_exit(ns, &["get"], 0);
    assert!(all.contains(&format!("Canary/{CANARY}")), "{all}");
    // While paused the run does not end: a timeout.
    let out = expect_exit(ns, &["status", CANARY, "--timeout", "4s"], 2);
    assert!(
        out.contains("[paused]") && out.contains("Timed out"),
        "{out}"
    );

    // Resume, followed by `get -w` (a pipe: one block per change).
    let watch = spawn(ns, &["get", CANARY, "-w"]);
    std::thread::sleep(Duration::from_secs(2));
    expect_exit(ns, &["resume", CANARY], 0);
    wait_for(
        ns,
        "the release to move on",
        Duration::from_secs(30),
        || (weight(ns) > held).then_some(()),
    );
    let moved = weight(ns);
    std::thread::sleep(Duration::from_secs(1));
    let mut watch = watch;
    let _ = watch.kill();
    let watched = watch.wait_with_output().expect("get -w output");
    let watched = String::from_utf8_lossy(&watched.stdout);
    for want in [
        format!("weight {held}  "),
        format!("weight {moved}  "),
        "[paused]".to_string(),
    ] {
        if !watched.contains(&want) {
            fail(ns, &format!("get -w never showed {want:?}:\n{watched}"));
        }
    }

    // Promote skips the remaining steps; a status started before it sees the success.
    let waiting = spawn(ns, &["status", CANARY, "--timeout", "120s"]);
    expect_exit(ns, &["promote", CANARY], 0);
    let mut max_weight = 0;
    wait_for(
        ns,
        "Succeeded after promote",
        Duration::from_secs(90),
        || {
            let (phase, w) = status_line(ns)?;
            if phase == "Progressing" {
                max_weight = max_weight.max(w);
            }
            (phase == "Succeeded").then_some(())
        },
    );
    assert!(
        max_weight < 50,
        "reached weight {max_weight} despite promote"
    );
    assert_eq!(primary_version(ns).as_deref(), Some("v2"));
    let waited = waiting.wait_with_output().expect("status output");
    if waited.status.code() != Some(0) {
        fail(ns, &format!("status during promote: {}", text(&waited)));
    }
    let log = String::from_utf8_lossy(&waited.stdout);
    assert!(log.contains("Progressing  weight"), "{log}");
    assert!(log.contains("Succeeded: revision"), "{log}");
    expect_exit(ns, &["promote", CANARY], 1);
    expect_exit(ns, &["retry", CANARY], 1);

    // v3: right after the template changes the old success is not this run's outcome.
    must(
        ns,
        &["-n", ns, "set", "env", "deploy/catalog", "VERSION=v3"],
    );
    expect_exit(ns, &["status", CANARY, "--timeout", "3s"], 2);
    wait_for(ns, "v3 to start", Duration::from_secs(60), || {
        let (phase, w) = status_line(ns)?;
        (phase == "Progressing" && w >= 10).then_some(())
    });
    let v3 = applied(ns);
    expect_exit(ns, &["abort", CANARY], 0);
    wait_for(ns, "Failed after abort", Duration::from_secs(60), || {
        (status_line(ns)?.0 == "Failed").then_some(())
    });
    assert_eq!(primary_version(ns).as_deref(), Some("v2"));
    let out = expect_exit(ns, &["status", CANARY, "--timeout", "20s"], 1);
    assert!(out.contains("Failed: revision"), "{out}");
    // The reason comes from the controller's events.
    assert!(out.contains("aborted on request"), "{out}");
    let out = run(ns, &["abort", CANARY]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("phase is Failed"),
        "{}",
        text(&out)
    );

    // Retry runs the same revision again, pod template untouched, to the end.
    expect_exit(ns, &["retry", CANARY], 0);
    wait_for(ns, "the retry to start", Duration::from_secs(60), || {
        (status_line(ns)?.0 == "Progressing").then_some(())
    });
    assert_eq!(applied(ns), v3, "a retry keeps the revision");
    let out = expect_exit(ns, &["status", CANARY, "--timeout", "180s"], 0);
    assert!(out.contains("promoted"), "{out}");
    assert_eq!(primary_version(ns).as_deref(), Some("v3"));

    // A target that never becomes ready, aborted: the deployment's own state is shown.
    apply_yaml(ns, &app_yaml(ns, "v4", false));
    wait_for(ns, "v4 to start", Duration::from_secs(60), || {
        (status_line(ns)?.0 == "Progressing").then_some(())
    });
    expect_exit(ns, &["abort", CANARY], 0);
    let out = expect_exit(ns, &["status", CANARY, "--timeout", "60s"], 1);
    assert!(out.contains("Failed"), "{out}");
    let tree = expect_exit(ns, &["get", CANARY], 0);
    assert!(tree.contains(&format!("Canary/{CANARY}  Failed")), "{tree}");
    assert!(tree.contains("Last warning"), "{tree}");
}
