//! Readiness probes (httpGet, tcpSocket) against a pod's own IP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ProbeSpecError {
    #[error("probe port name '{0}' is not a declared container port")]
    UnknownPortName(String),
    #[error("probe port {0} is out of range")]
    BadPort(i32),
    #[error("only httpGet, tcpSocket and exec (with a command) probes are supported")]
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    HttpGet {
        port: u16,
        path: String,
        host_header: Option<String>,
    },
    TcpSocket {
        port: u16,
    },
    /// A command run inside the pod's network namespace; exit 0 is success.
    Exec {
        command: Vec<String>,
    },
}

/// A probe with Kubernetes' defaults applied.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, ProbeSpecError> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
                .ok_or_else(|| ProbeSpecError::UnknownPortName(name.clone()))?,
        },
    };
    u16::try_from(number).map_err(|_| ProbeSpecError::BadPort(number))
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
}

fn count(value: Option<i32>, default: u32) -> u32 {
    value
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

impl ProbeSpec {
    pub fn from_container(probe: &Probe, container: &Container) -> Result<Self, ProbeSpecError> {
        let ports = container.ports.as_deref().unwrap_or_default();
        let action = if let Some(http) = &probe.http_get {
            let host_header = http
                .http_headers
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| h.value.clone());
            ProbeAction::HttpGet {
                port: resolve_port(&http.port, ports)?,
                path: http.path.clone().unwrap_or_else(|| "/".to_string()),
                host_header,
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            ProbeAction::TcpSocket {
                port: resolve_port(&tcp.port, ports)?,
            }
        } else if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Err(ProbeSpecError::Unsupported);
            }
            ProbeAction::Exec { command }
        } else {
            return Err(ProbeSpecError::Unsupported);
        };
        Ok(Self {
            action,
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        })
    }

    /// One attempt against the pod at `ip` (whose namespace is `netns`, for exec
    /// probes): Ok on success, Err with the reason otherwise.
    pub async fn check(&self, ip: IpAddr, netns: Option<&str>) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.attempt(ip, netns)).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
    }

    async fn attempt(&self, ip: IpAddr, netns: Option<&str>) -> Result<(), String> {
        match &self.action {
            ProbeAction::Exec { command } => {
                let (program, args) = command
                    .split_first()
                    .ok_or("exec probe without a command")?;
                let mut cmd = match netns {
                    Some(netns) => {
                        let mut c = tokio::process::Command::new("ip");
                        c.args(["netns", "exec", netns]).args(command);
                        c
                    }
                    None => {
                        let mut c = tokio::process::Command::new(program);
                        c.args(args);
                        c
                    }
                };
                let status = cmd
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    // A timed-out probe must not leave its command running.
                    .kill_on_drop(true)
                    .status()
                    .await
                    .map_err(|e| format!("exec {program}: {e}"))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("exec probe {command:?} failed: {status}"))
                }
            }
            ProbeAction::TcpSocket { port } => TcpStream::connect(SocketAddr::new(ip, *port))
                .await
                .map(|_| ())
                .map_err(|e| format!("tcp connect {ip}:{port}: {e}")),
            ProbeAction::HttpGet {
                port,
                path,
                host_header,
            } => {
                let mut stream = TcpStream::connect(SocketAddr::new(ip, *port))
                    .await
                    .map_err(|e| format!("http connect {ip}:{port}: {e}"))?;
                let host = host_header
                    .clone()
                    .unwrap_or_else(|| format!("{ip}:{port}"));
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-node-agent\r\nConnection: close\r\n\r\n"
                );
                stream
                    .write_all(request.as_bytes())
                    .await
                    .map_err(|e| format!("http write: {e}"))?;
                let mut head = Vec::with_capacity(256);
                let mut buf = [0u8; 256];
                while !head.contains(&b'\n') && head.len() < 4096 {
                    let n = stream
                        .read(&mut buf)
                        .await
                        .map_err(|e| format!("http read: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let status = parse_status(&head).ok_or("malformed HTTP response")?;
                // Kubernetes treats 200..400 as success.
                if (200..400).contains(&status) {
                    Ok(())
                } else {
                    Err(format!("HTTP probe failed with statuscode: {status}"))
                }
            }
        }
    }
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/"))?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::HTTPGetAction;

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"garbage\r\n"), None);
    }

    #[test]
    fn resolves_named_ports_and_defaults() {
        let container = Container {
            name: "app".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let probe = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = ProbeSpec::from_container(&probe, &container).expect("valid probe");
        assert_eq!(
            spec.action,
            ProbeAction::HttpGet {
                port: 8080,
                path: "/".into(),
                host_header: None
            }
        );
        assert_eq!(spec.period, Duration::from_secs(10));
        assert_eq!(spec.failure_threshold, 3);

        let missing = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("metrics".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(ProbeSpec::from_container(&missing, &container).is_err());
    }

    #[tokio::test]
    async fn exec_probe_uses_the_exit_status() {
        let probe = |command: &[&str]| ProbeSpec {
            action: ProbeAction::Exec {
                command: command.iter().map(|c| c.to_string()).collect(),
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 1,
        };
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(probe(&["/bin/true"]).check(ip, None).await, Ok(()));
        assert!(probe(&["/bin/false"]).check(ip, None).await.is_err());
        let slow = probe(&["/bin/sleep", "5"]).check(ip, None).await;
        assert!(slow.expect_err("times out").contains("timed out"));
    }

    #[tokio::test]
    async fn http_probe_reads_status_from_a_live_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for status in ["200 OK", "500 Internal Server Error"] {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf).await;
                let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        let spec = ProbeSpec {
            action: ProbeAction::HttpGet {
                port,
                path: "/healthz".into(),
                host_header: None,
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 1,
        };
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(spec.check(ip, None).await, Ok(()));
        let failed = spec.check(ip, None).await.expect_err("500 fails the probe");
        assert!(failed.contains("500"), "{failed}");
    }
}
