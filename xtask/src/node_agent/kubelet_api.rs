//! Just enough of the kubelet's HTTPS API for `kubectl logs`: the apiserver
//! proxies `pods/log` to `GET /containerLogs/{namespace}/{pod}/{container}` on
//! the node's InternalIP, authenticating with its kubelet client certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum KubeletApiError {
    #[error("reading PEM file {path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct KubeletApiConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Only clients with a certificate from this CA (the apiserver) are served.
    pub client_ca: PathBuf,
    /// Where `<namespace>_<pod>_<container>.log` files are.
    pub logs_dir: PathBuf,
}

fn pem_error(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> KubeletApiError + '_ {
    move |source| KubeletApiError::Pem {
        path: path.to_path_buf(),
        source,
    }
}

/// Binds the listener and serves until the returned task is aborted.
pub async fn spawn(
    config: KubeletApiConfig,
) -> Result<tokio::task::JoinHandle<()>, KubeletApiError> {
    let certs = CertificateDer::pem_file_iter(&config.cert)
        .map_err(pem_error(&config.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(&config.cert))?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(pem_error(&config.key))?;
    let mut roots = RootCertStore::empty();
    for ca in
        CertificateDer::pem_file_iter(&config.client_ca).map_err(pem_error(&config.client_ca))?
    {
        roots.add(ca.map_err(pem_error(&config.client_ca))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| KubeletApiError::Bind {
                addr: config.listen,
                source,
            })?;
    let logs_dir = Arc::new(config.logs_dir);
    Ok(tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    warn!("kubelet API accept: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let (acceptor, logs_dir) = (acceptor.clone(), logs_dir.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        if let Err(e) = handle(stream, &logs_dir).await {
                            debug!(%peer, "kubelet API connection: {e}");
                        }
                    }
                    Err(e) => debug!(%peer, "kubelet API TLS handshake: {e}"),
                }
            });
        }
    }))
}

/// A parsed `/containerLogs/...` request.
#[derive(Debug, PartialEq, Eq)]
pub struct LogRequest {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
}

/// Kubernetes object names are DNS-1123; anything else cannot name a log file.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with('.')
}

/// Parses the request target; None for anything but a well-formed log request.
pub fn parse_log_request(target: &str) -> Option<LogRequest> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut parts = path.strip_prefix("/containerLogs/")?.split('/');
    let (namespace, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ![namespace, pod, container].iter().all(|n| valid_name(n)) {
        return None;
    }
    let mut request = LogRequest {
        namespace: namespace.into(),
        pod: pod.into(),
        container: container.into(),
        follow: false,
        tail_lines: None,
        limit_bytes: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "follow" => request.follow = value == "true" || value == "1",
            "tailLines" => request.tail_lines = value.parse().ok(),
            "limitBytes" => request.limit_bytes = value.parse().ok(),
            _ => {}
        }
    }
    Some(request)
}

/// The last `n` lines of `text`.
pub fn tail(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &text[text.len()..];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    &text[start..]
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    logs_dir: &Path,
) -> std::io::Result<()> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = reader.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or_default())
        .into_owned();
    let mut words = line.split_whitespace();
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let request = (method == "GET")
        .then(|| parse_log_request(target))
        .flatten();
    let Some(request) = request else {
        return respond(
            &mut writer,
            "404 Not Found",
            b"only GET /containerLogs/{namespace}/{pod}/{container} is served\n",
        )
        .await;
    };
    let path = logs_dir.join(format!(
        "{}_{}_{}.log",
        request.namespace, request.pod, request.container
    ));
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(_) => {
            let message = format!(
                "no logs for container {} of pod {}/{}\n",
                request.container, request.namespace, request.pod
            );
            return respond(&mut writer, "404 Not Found", message.as_bytes()).await;
        }
    };
    let mut content = Vec::new();
    file.read_to_end(&mut content).await?;
    let mut offset = content.len() as u64;
    let mut body = match request.tail_lines {
        Some(n) => tail(&content, n).to_vec(),
        None => content,
    };
    if let Some(limit) = request.limit_bytes {
        body.truncate(limit);
    }
    writer
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        .await?;
    writer.write_all(&body).await?;
    writer.flush().await?;
    if !request.follow {
        return writer.shutdown().await;
    }
    // Follow: stream appended bytes until the client goes away.
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            read = reader.read(&mut probe) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                let len = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(offset);
                if len < offset {
                    offset = 0;
                }
                if len > offset {
                    file.seek(std::io::SeekFrom::Start(offset)).await?;
                    let mut chunk = Vec::new();
                    (&mut file).take(len - offset).read_to_end(&mut chunk).await?;
                    offset += chunk.len() as u64;
                    writer.write_all(&chunk).await?;
                    writer.flush().await?;
                }
            }
        }
    }
}

async fn respond<W: AsyncWrite + Unpin>(
    writer: &mut W,
    status: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    writer.write_all(head.as_bytes()).await?;
    writer.write_all(body).await?;
    writer.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_requests() {
        let r = parse_log_request("/containerLogs/default/web-1/http?follow=true&tailLines=10")
            .expect("valid");
        assert_eq!(
            r,
            LogRequest {
                namespace: "default".into(),
                pod: "web-1".into(),
                container: "http".into(),
                follow: true,
                tail_lines: Some(10),
                limit_bytes: None,
            }
        );
        assert!(parse_log_request("/containerLogs/default/../etc").is_none());
        assert!(parse_log_request("/containerLogs/default/a/b/c").is_none());
        assert!(parse_log_request("/containerLogs/Default/a/b").is_none());
        assert!(parse_log_request("/exec/default/a/b").is_none());
    }

    #[test]
    fn tails_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 1), b"c");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }

    #[tokio::test]
    async fn serves_a_log_tail_over_a_stream() {
        let dir = std::env::temp_dir().join(format!("sluice-kubelet-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("ns_pod_c.log"), "one\ntwo\nthree\n").expect("log");
        let (client, server) = tokio::io::duplex(4096);
        let serving = tokio::spawn({
            let dir = dir.clone();
            async move { handle(server, &dir).await }
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"GET /containerLogs/ns/pod/c?tailLines=2 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        rd.read_to_string(&mut response).await.expect("read");
        serving.await.expect("join").expect("served");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.ends_with("\r\n\r\ntwo\nthree\n"), "{response}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
