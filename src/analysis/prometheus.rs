//! Prometheus HTTP API client: `GET {address}/api/v1/query?query=...`.
//!
//! The value of a query is the last sample of the returned vector (or the scalar), as
//! in Flagger. An empty vector or NaN is [`Error::NoData`]; a connection failure,
//! timeout or 5xx is [`Error::Offline`]; a rejected query is [`Error::BadQuery`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Request, StatusCode, Url};
use serde::Deserialize;

use super::builtin::promql;
use super::{error_chain, Error, MetricQuery, MetricsProvider, Result};

/// The query `is_online` runs: it needs no data, only a working query engine.
const ONLINE_QUERY: &str = "vector(1)";

/// Credentials, read by the controller from the MetricTemplate's Secret.
#[derive(Clone, PartialEq, Eq)]
pub enum PrometheusAuth {
    Basic { username: String, password: String },
    Bearer { token: String },
}

impl fmt::Debug for PrometheusAuth {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrometheusAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            PrometheusAuth::Bearer { .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusConfig {
    /// Base URL, e.g. `http://prometheus.istio-system:9090` (a path prefix is kept).
    pub address: String,
    pub auth: Option<PrometheusAuth>,
    /// Extra request headers (MetricTemplate `provider.headers`).
    pub headers: BTreeMap<String, String>,
    /// Bound on the whole request, connection included.
    pub timeout: Duration,
    /// Accept any TLS certificate (MetricTemplate `provider.insecureSkipVerify`).
    pub insecure_skip_verify: bool,
}

impl PrometheusConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    pub fn new(address: impl Into<String>) -> Self {
        PrometheusConfig {
            address: address.into(),
            auth: None,
            headers: BTreeMap::new(),
            timeout: Self::DEFAULT_TIMEOUT,
            insecure_skip_verify: false,
        }
    }
}

/// A validated, ready-to-use Prometheus client. Cheap to clone.
#[derive(Clone)]
pub struct PrometheusProvider {
    client: Client,
    address: String,
    query_url: Url,
    headers: HeaderMap,
    auth: Option<PrometheusAuth>,
    timeout: Duration,
}

impl fmt::Debug for PrometheusProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusProvider")
            .field("address", &self.address)
            .field("auth", &self.auth)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PrometheusProvider {
    /// Validates the address and headers and builds the HTTP client.
    pub fn new(config: PrometheusConfig) -> Result<Self> {
        let bad = |reason: String| Error::BadConfig { reason };
        let base = Url::parse(&config.address)
            .map_err(|e| bad(format!("address `{}`: {e}", config.address)))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(bad(format!(
                "address `{}` must be an http(s) URL with a host",
                config.address
            )));
        }
        let query_url = Url::parse(&format!(
            "{}/api/v1/query",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| bad(format!("address `{}`: {e}", config.address)))?;

        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad(format!("header name `{name}` is invalid")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| bad(format!("header `{name}` has an invalid value")))?;
            headers.insert(name, value);
        }
        if config.timeout.is_zero() {
            return Err(bad("timeout must be longer than zero".into()));
        }

        let client = Client::builder()
            .timeout(config.timeout)
            .danger_accept_invalid_certs(config.insecure_skip_verify)
            .build()
            .map_err(|e| bad(format!("HTTP client: {e}")))?;
        Ok(PrometheusProvider {
            client,
            address: config.address,
            query_url,
            headers,
            auth: config.auth,
            timeout: config.timeout,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The HTTP request for a query (exposed so its shape can be checked without IO).
    pub fn query_request(&self, promql: &str) -> Result<Request> {
        let mut url = self.query_url.clone();
        url.query_pairs_mut().append_pair("query", promql);
        let mut builder = self.client.get(url).headers(self.headers.clone());
        builder = match &self.auth {
            Some(PrometheusAuth::Basic { username, password }) => {
                builder.basic_auth(username, Some(password))
            }
            Some(PrometheusAuth::Bearer { token }) => builder.bearer_auth(token),
            None => builder,
        };
        builder.build().map_err(|e| Error::BadConfig {
            reason: format!("request: {e}"),
        })
    }

    /// Runs a PromQL query; the value is the last sample of the result.
    pub async fn query_promql(&self, promql: &str) -> Result<f64> {
        let request = self.query_request(promql)?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| self.offline(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.offline(&e))?;
        parse_query_response(&self.address, status, &body, promql)
    }

    fn offline(&self, error: &reqwest::Error) -> Error {
        let reason = if error.is_timeout() {
            format!("no answer within {:?}", self.timeout)
        } else {
            error_chain(error)
        };
        Error::Offline {
            provider: self.address.clone(),
            reason,
        }
    }
}

impl MetricsProvider for PrometheusProvider {
    async fn query(&self, query: &MetricQuery) -> Result<f64> {
        match query {
            MetricQuery::PromQl(text) => self.query_promql(text).await,
            MetricQuery::Builtin(q) => {
                let text = promql(q.reporter, q.metric, &q.namespace, &q.workload, q.interval)?;
                self.query_promql(&text).await
            }
        }
    }

    async fn is_online(&self) -> Result<()> {
        let value = self.query_promql(ONLINE_QUERY).await?;
        if value == 1.0 {
            Ok(())
        } else {
            Err(Error::BadResponse {
                provider: self.address.clone(),
                reason: format!("{ONLINE_QUERY} returned {value}"),
            })
        }
    }
}

// === Response parsing (pure) ===

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum ApiData {
    Vector(Vec<VectorSample>),
    Scalar(SamplePair),
    // Only the result type matters: neither is a single value.
    #[allow(dead_code)]
    Matrix(serde::de::IgnoredAny),
    #[allow(dead_code)]
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct VectorSample {
    value: SamplePair,
}

/// `[<unix time>, "<value>"]`
#[derive(Deserialize)]
struct SamplePair(#[allow(dead_code)] serde_json::Value, String);

/// Turns an HTTP status and body from `/api/v1/query` into a value or an error.
pub fn parse_query_response(
    provider: &str,
    status: StatusCode,
    body: &[u8],
    promql: &str,
) -> Result<f64> {
    let bad_response = |reason: String| Error::BadResponse {
        provider: provider.into(),
        reason,
    };
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(Error::Unauthorized {
            provider: provider.into(),
            status: status.as_u16(),
        });
    }
    let parsed: Option<ApiResponse> = serde_json::from_slice(body).ok();
    let api_error = parsed.as_ref().and_then(|r| {
        (r.status != "success").then(|| {
            format!(
                "{}: {}",
                r.error_type.as_deref().unwrap_or("error"),
                r.error.as_deref().unwrap_or("no message")
            )
        })
    });
    if status.is_server_error() {
        return Err(Error::Offline {
            provider: provider.into(),
            reason: api_error.unwrap_or_else(|| format!("HTTP {status}")),
        });
    }
    // Prometheus answers 400 (bad_data) and 422 (execution) for queries it rejects.
    if status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY {
        return Err(Error::BadQuery {
            reason: format!(
                "{} (query: {promql})",
                api_error.unwrap_or_else(|| format!("HTTP {status}"))
            ),
        });
    }
    if !status.is_success() {
        return Err(bad_response(format!("HTTP {status}")));
    }
    let response = parsed.ok_or_else(|| bad_response("not a Prometheus API response".into()))?;
    if let Some(api_error) = api_error {
        return Err(Error::BadQuery {
            reason: format!("{api_error} (query: {promql})"),
        });
    }
    let sample = match response.data {
        // Several series: the last one wins, as in Flagger.
        Some(ApiData::Vector(samples)) => samples.into_iter().last().map(|s| s.value),
        Some(ApiData::Scalar(pair)) => Some(pair),
        Some(ApiData::Matrix(_)) | Some(ApiData::String(_)) => {
            return Err(Error::BadQuery {
                reason: format!(
                    "the query must return an instant vector or a scalar (query: {promql})"
                ),
            })
        }
        None => return Err(bad_response("response has no data".into())),
    };
    let SamplePair(_, text) = sample.ok_or_else(|| {
        Error::no_data(format!(
            "the query returned an empty vector (query: {promql})"
        ))
    })?;
    let value = parse_sample_value(&text)
        .ok_or_else(|| bad_response(format!("sample value `{text}` is not a number")))?;
    if value.is_nan() {
        return Err(Error::no_data(format!(
            "the query returned NaN (query: {promql})"
        )));
    }
    Ok(value)
}

fn parse_sample_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let ok = StatusCode::OK;
        let cases: [(&str, StatusCode, &str, std::result::Result<f64, &str>); 16] = [
            (
                "vector",
                ok,
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"99.5"]}]}}"#,
                Ok(99.5),
            ),
            (
                "last sample wins",
                ok,
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]}}"#,
                Ok(2.0),
            ),
            (
                "scalar",
                ok,
                r#"{"status":"success","data":{"resultType":"scalar","result":[1,"42"]}}"#,
                Ok(42.0),
            ),
            (
                "+Inf is a value",
                ok,
                r#"{"status":"success","data":{"resultType":"scalar","result":[1,"+Inf"]}}"#,
                Ok(f64::INFINITY),
            ),
            (
                "empty vector",
                ok,
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                Err("no_data"),
            ),
            (
                "NaN",
                ok,
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#,
                Err("no_data"),
            ),
            (
                "matrix",
                ok,
                r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
                Err("bad_query"),
            ),
            (
                "bad_data",
                StatusCode::BAD_REQUEST,
                r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
                Err("bad_query"),
            ),
            (
                "execution",
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"status":"error","errorType":"execution","error":"boom"}"#,
                Err("bad_query"),
            ),
            (
                "unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"error","errorType":"unavailable","error":"starting"}"#,
                Err("offline"),
            ),
            ("gateway", StatusCode::BAD_GATEWAY, "<html>", Err("offline")),
            (
                "unauthorized",
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                Err("unauthorized"),
            ),
            ("forbidden", StatusCode::FORBIDDEN, "", Err("unauthorized")),
            (
                "not found",
                StatusCode::NOT_FOUND,
                "404 page not found",
                Err("bad_response"),
            ),
            ("not json", ok, "<html>hello</html>", Err("bad_response")),
            (
                "not a number",
                ok,
                r#"{"status":"success","data":{"resultType":"scalar","result":[1,"abc"]}}"#,
                Err("bad_response"),
            ),
        ];
        for (name, status, body, want) in cases {
            let got = parse_query_response("prom", status, body.as_bytes(), "q");
            match want {
                Ok(want) => assert_eq!(got, Ok(want), "{name}"),
                Err(label) => assert_eq!(got.map_err(|e| e.label()), Err(label), "{name}"),
            }
        }
    }

    #[test]
    fn no_data_names_the_query() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        let err = parse_query_response("prom", StatusCode::OK, body.as_bytes(), "up{job=\"x\"}")
            .unwrap_err();
        assert!(err.to_string().contains("up{job=\"x\"}"), "{err}");
    }

    #[test]
    fn requests_carry_query_auth_and_headers() {
        let cases = [
            (None, None),
            (
                Some(PrometheusAuth::Basic {
                    username: "alice".into(),
                    password: "s3cret".into(),
                }),
                // base64("alice:s3cret")
                Some("Basic YWxpY2U6czNjcmV0"),
            ),
            (
                Some(PrometheusAuth::Bearer {
                    token: "tok".into(),
                }),
                Some("Bearer tok"),
            ),
        ];
        for (auth, want_authorization) in cases {
            let mut config = PrometheusConfig::new("http://127.0.0.1:9090/prom/");
            config.auth = auth;
            config
                .headers
                .insert("X-Scope-OrgID".into(), "tenant-1".into());
            let provider = PrometheusProvider::new(config).unwrap();
            let request = provider.query_request("sum(rate(x[1m])) / 2").unwrap();
            assert_eq!(request.method(), "GET");
            assert_eq!(request.url().path(), "/prom/api/v1/query");
            let query: Vec<(String, String)> = request.url().query_pairs().into_owned().collect();
            assert_eq!(
                query,
                [("query".to_string(), "sum(rate(x[1m])) / 2".to_string())]
            );
            assert_eq!(request.headers()["x-scope-orgid"], "tenant-1");
            assert_eq!(
                request
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap()),
                want_authorization
            );
        }
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let mut config = PrometheusConfig::new("http://127.0.0.1:9090");
        config.auth = Some(PrometheusAuth::Basic {
            username: "alice".into(),
            password: "s3cret".into(),
        });
        let provider = PrometheusProvider::new(config).unwrap();
        let text = format!("{provider:?}");
        assert!(text.contains("alice") && !text.contains("s3cret"), "{text}");
    }

    #[test]
    fn invalid_configuration_is_rejected() {
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            Duration,
        );
        let cases: [Case; 5] = [
            ("not a url", &[], PrometheusConfig::DEFAULT_TIMEOUT),
            ("ftp://host", &[], PrometheusConfig::DEFAULT_TIMEOUT),
            (
                "http://127.0.0.1:9090",
                &[("bad header", "x")],
                PrometheusConfig::DEFAULT_TIMEOUT,
            ),
            (
                "http://127.0.0.1:9090",
                &[("x-ok", "line\nbreak")],
                PrometheusConfig::DEFAULT_TIMEOUT,
            ),
            ("http://127.0.0.1:9090", &[], Duration::ZERO),
        ];
        for (address, headers, timeout) in cases {
            let mut config = PrometheusConfig::new(address);
            config.headers = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            config.timeout = timeout;
            let err = PrometheusProvider::new(config).unwrap_err();
            assert_eq!(err.label(), "bad_config", "{address} {headers:?}");
        }
    }
}
