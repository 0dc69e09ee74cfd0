//! The long-running binaries stop cleanly on SIGTERM, as they do on Ctrl-C: it is what
//! Kubernetes and `podman stop` send, and as a container's PID 1 nothing else would.
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child when the test ends early.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on, never handed out twice in this run: the tests run in
/// parallel, and a port one test freed could otherwise be another's listener by the time
/// its binary binds it.
fn free_port() -> SocketAddr {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut handed_out = HANDED_OUT.lock().unwrap();
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            return addr;
        }
    }
}

fn start(command: &mut Command, listen: SocketAddr) -> Running {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(listen) {
        if let Some(status) = running.0.try_wait().unwrap() {
            panic!("exited before listening on {listen}: {status}");
        }
        assert!(Instant::now() < deadline, "{listen} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

/// Whether something listens on `listen`. A connection whose two ends are the same
/// address is a TCP self-connect (the kernel picked `listen` as the source port while
/// nothing listened there), not the binary: signalling it then would catch it before its
/// handler is installed.
fn listening(listen: SocketAddr) -> bool {
    TcpStream::connect(listen).is_ok_and(|s| s.local_addr().ok() != Some(listen))
}

/// Sends SIGTERM and expects a successful exit within 2 s.
fn terminate(mut running: Running) {
    let pid = running.0.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid} failed");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            assert!(status.success(), "exit after SIGTERM: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "still running 2 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn demo_stops_on_sigterm() {
    let listen = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-demo"));
    command.env("LISTEN", listen.to_string());
    terminate(start(&mut command, listen));
}

#[test]
fn proxy_in_file_mode_stops_on_sigterm() {
    let (listen, admin) = (free_port(), free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-proxy"));
    command
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/proxy/catalog.yaml"),
        ])
        .args(["--listen", &listen.to_string()])
        .args(["--admin", &admin.to_string()])
        .args(["--namespace", "istioinaction"]);
    terminate(start(&mut command, listen));
}

#[test]
fn loadtester_stops_on_sigterm() {
    let listen = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-loadtester"));
    command.args(["--listen", &listen.to_string()]);
    terminate(start(&mut command, listen));
}

/// One HTTP/1.1 request on `stream`; returns the response head and body as text.
fn http_get(stream: &mut TcpStream, host: &str, path: &str) -> String {
    use std::io::{Read, Write};
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn proxy_drains_on_sigterm_and_finishes_requests_in_flight() {
    // A backend that takes 1.5 s per answer, so requests are in flight across the drain.
    let backend = free_port();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_sluice-demo"));
    demo.env("LISTEN", backend.to_string())
        .env("TIMING_50_PERCENTILE", "1500ms");
    let _backend = start(&mut demo, backend);
    let dir = std::env::temp_dir().join(format!("sluice-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!("namespace: shop\nendpoints:\n- {{service: slow, address: \"{backend}\"}}\n"),
    )
    .unwrap();

    let (listen, admin) = (free_port(), free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-proxy"));
    command
        .arg("--config")
        .arg(&config)
        .args(["--listen", &listen.to_string()])
        .args(["--admin", &admin.to_string()])
        .args(["--namespace", "shop", "--drain-period", "1s"])
        .args(["--shutdown-timeout", "5s"]);
    let mut proxy = start(&mut command, listen);
    let ready = http_get(&mut TcpStream::connect(admin).unwrap(), "admin", "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    let in_flight = |stream: TcpStream| {
        std::thread::spawn(move || {
            let mut stream = stream;
            http_get(&mut stream, "slow", "/")
        })
    };
    let first = in_flight(TcpStream::connect(listen).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let pid = proxy.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let sent = Instant::now();

    // Draining: not ready, but a new connection is still served.
    std::thread::sleep(Duration::from_millis(200));
    let ready = http_get(&mut TcpStream::connect(admin).unwrap(), "admin", "/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("draining"),
        "{ready}"
    );
    let second = in_flight(TcpStream::connect(listen).expect("still accepting while draining"));

    // After the drain period the port is closed while the requests still finish.
    std::thread::sleep(Duration::from_millis(1300).saturating_sub(sent.elapsed()));
    assert!(
        TcpStream::connect(listen).is_err(),
        "accepting after the drain period"
    );
    for (which, handle) in [("first", first), ("second", second)] {
        let response = handle.join().unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{which}: {response}");
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{which} is told the connection closes: {response}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = proxy.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running after its requests ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit after the drain: {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
