//! Shared helpers for the proxy integration tests: real sluice-demo backends and a real
//! proxy on 127.0.0.1 ephemeral ports, and a small HTTP client. Loopback only.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice::demo::{DemoConfig, DemoHandle};
use sluice::proxy::config::{ConfigFile, ProxySettings};
use sluice::proxy::{Proxy, ProxyOptions};

pub const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

pub async fn demo(name: &str, version: &str, tweak: impl FnOnce(&mut DemoConfig)) -> DemoHandle {
    let mut config = DemoConfig {
        listen: SocketAddr::from((LOOPBACK, 0)),
        name: name.into(),
        version: version.into(),
        pod: format!("{name}-{version}"),
        ..DemoConfig::default()
    };
    tweak(&mut config);
    sluice::demo::spawn(config)
        .await
        .expect("demo backend starts")
}

/// A loopback port with nothing listening (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((LOOPBACK, 0)))
        .await
        .unwrap();
    listener.local_addr().unwrap()
}

pub struct RunningProxy {
    pub proxy: Arc<Proxy>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub fn settings(namespace: &str, default_retries: bool) -> ProxySettings {
    let mut s = ProxySettings {
        namespace: namespace.into(),
        default_retries,
        ..ProxySettings::default()
    };
    s.identity.namespace = namespace.into();
    s
}

pub fn parse(yaml: &str) -> ConfigFile {
    serde_yaml::from_str(yaml).expect("test yaml parses")
}

pub async fn start_proxy(yaml: &str, settings: ProxySettings) -> RunningProxy {
    start_proxy_with(yaml, settings, |_| {}).await
}

/// `start_proxy` with options changed by `tweak` (access log off before it runs).
pub async fn start_proxy_with(
    yaml: &str,
    settings: ProxySettings,
    tweak: impl FnOnce(&mut ProxyOptions),
) -> RunningProxy {
    let mut options = ProxyOptions {
        access_log: false,
        ..ProxyOptions::default()
    };
    tweak(&mut options);
    let proxy = Proxy::new(settings, options);
    proxy.apply(&parse(yaml)).expect("config is valid");
    let traffic = tokio::net::TcpListener::bind(SocketAddr::from((LOOPBACK, 0)))
        .await
        .unwrap();
    let admin = tokio::net::TcpListener::bind(SocketAddr::from((LOOPBACK, 0)))
        .await
        .unwrap();
    let addr = traffic.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let tasks = vec![
        tokio::spawn(sluice::proxy::server::serve(proxy.clone(), traffic)),
        tokio::spawn(sluice::proxy::admin::serve(proxy.clone(), admin)),
    ];
    RunningProxy {
        proxy,
        addr,
        admin: admin_addr,
        tasks,
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Clone)]
pub struct HttpClient(Client<HttpConnector, Full<Bytes>>);

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient(Client::builder(TokioExecutor::new()).build_http())
    }
}

impl HttpClient {
    /// HTTP/2 with prior knowledge (h2c).
    pub fn h2c() -> Self {
        HttpClient(
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        )
    }

    /// Connects from `local` (another loopback address), as a different pod would.
    pub fn from_address(local: std::net::IpAddr) -> Self {
        assert!(local.is_loopback(), "tests talk from loopback only");
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(local));
        HttpClient(Client::builder(TokioExecutor::new()).build(connector))
    }

    /// GET `path` from `addr` with the given Host and extra headers; 10 s bound.
    pub async fn get(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.send(http::Method::GET, addr, host, path, headers, Bytes::new())
            .await
    }

    /// POST `body` to `path` on `addr` with the given Host; 10 s bound.
    pub async fn post(&self, addr: SocketAddr, host: &str, path: &str, body: Bytes) -> Reply {
        self.send(http::Method::POST, addr, host, path, &[], body)
            .await
    }

    async fn send(
        &self,
        method: http::Method,
        addr: SocketAddr,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        assert!(addr.ip().is_loopback(), "tests talk to loopback only");
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("host", host);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(body)).unwrap();
        let call = async {
            let response = self.0.request(request).await.expect("request completes");
            let status = response.status();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            Reply {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into(),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("request finishes within 10s")
    }

    pub async fn admin(&self, running: &RunningProxy, path: &str) -> Reply {
        self.get(running.admin, "admin", path, &[]).await
    }
}

/// Sum of a metric's samples whose label set contains every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
