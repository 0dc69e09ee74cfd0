//! The built binaries, as users run them: sluice-demo backends and sluice-proxy in file
//! mode on loopback, driven through their flags and environment.
mod proxy_common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proxy_common::*;

/// Kills the child process when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn free_port() -> SocketAddr {
    closed_port().await
}

async fn wait_healthy(client: &HttpClient, addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && client.get(addr, "health", "/healthz", &[]).await.status == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{addr} did not become healthy");
}

fn demo_binary(listen: SocketAddr, version: &str) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_sluice-demo"))
        .env("LISTEN", listen.to_string())
        .env("NAME", "catalog")
        .env("IMAGE_TAG", version)
        .env("CATALOG", "true")
        .env("POD_NAME", format!("catalog-{version}-0"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sluice-demo starts");
    Running(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_route_by_file_config_and_reject_bad_files() {
    let client = HttpClient::default();
    let (a1, a2) = (free_port().await, free_port().await);
    let _v1 = demo_binary(a1, "v1");
    let _v2 = demo_binary(a2, "v2");
    wait_healthy(&client, a1).await;
    wait_healthy(&client, a2).await;

    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/proxy/catalog.yaml"
    ))
    .unwrap();
    let config = example
        .replace("127.0.0.1:3001", &a1.to_string())
        .replace("127.0.0.1:3002", &a2.to_string());
    let dir = std::env::temp_dir().join(format!("sluice-proxy-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("catalog.yaml");
    std::fs::write(&path, &config).unwrap();

    let (listen, admin) = (free_port().await, free_port().await);
    let proxy = Running(
        Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
            .args(["--config", path.to_str().unwrap()])
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(["--namespace", "istioinaction", "--default-retries", "false"])
            // Polling effectively off: the reload below must come from SIGHUP.
            .args(["--reload-poll", "1h"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sluice-proxy starts"),
    );
    wait_healthy(&client, admin).await;

    let internal = client
        .get(
            listen,
            "catalog",
            "/items",
            &[("x-istio-cohort", "internal")],
        )
        .await;
    assert!(internal.body.contains("imageUrl"), "{}", internal.body);
    let mut v2_answers = 0;
    for _ in 0..100 {
        let reply = client
            .get(listen, "catalog.istioinaction", "/items", &[])
            .await;
        assert_eq!(reply.status, 200);
        v2_answers += usize::from(reply.body.contains("imageUrl"));
    }
    // 90/10 over 100 calls: the material expects "about 10".
    assert!((1..=25).contains(&v2_answers), "{v2_answers}");
    let routes = client.get(admin, "admin", "/config/routes", &[]).await;
    assert!(routes
        .body
        .contains("outbound|version-v2|catalog.istioinaction.svc.cluster.local"));

    // Edit the file (everything to v2) and send SIGHUP: the new table is applied.
    std::fs::write(
        &path,
        config
            .replace("weight: 90", "weight: 0")
            .replace("weight: 10", "weight: 100"),
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &proxy.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    let mut all_v2 = false;
    for _ in 0..100 {
        let mut v2 = 0;
        for _ in 0..10 {
            v2 += usize::from(
                client
                    .get(listen, "catalog", "/items", &[])
                    .await
                    .body
                    .contains("imageUrl"),
            );
        }
        if v2 == 10 {
            all_v2 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(all_v2, "SIGHUP did not reload the file");
    drop(proxy);

    // A bad file at startup: the proxy exits non-zero naming the object and field.
    std::fs::write(&path, config.replace("weight: 90", "weight: -90")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
        .args(["--config", path.to_str().unwrap()])
        .args(["--listen", &free_port().await.to_string()])
        .args(["--admin", &free_port().await.to_string()])
        .args(["--namespace", "istioinaction"])
        .output()
        .expect("sluice-proxy runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("VirtualService istioinaction/catalog: spec.http[1].route[0].weight: weight -90 is negative"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Built without the `kube` feature (`cargo test --no-default-features`), Kubernetes mode
/// is refused with an error that says why, before any port opens.
#[cfg(not(feature = "kube"))]
#[test]
fn without_kube_the_proxy_refuses_kubernetes_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
        .args(["--kube", "--listen", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("sluice-proxy runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("built without the `kube` feature; use --config"),
        "{stderr}"
    );
}
