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

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(command: &mut Command, listen: SocketAddr) -> Running {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).is_err() {
        if let Some(status) = running.0.try_wait().unwrap() {
            panic!("exited before listening on {listen}: {status}");
        }
        assert!(Instant::now() < deadline, "{listen} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
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
