//! Shared harness code for the fuzz targets (also used by `cargo test` in this crate
//! to replay the seed corpus).
use http::{HeaderMap, HeaderName, HeaderValue};
use sluice::proxy::config::{self, ConfigFile, ProxySettings, Snapshot};
use sluice::proxy::routes::{RequestView, Selection, SourceIdentity};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The catalog example: used when the fuzzed config does not validate, so request
/// matching is exercised on every input.
const FALLBACK: &str = include_str!("../../examples/proxy/catalog.yaml");

fn settings() -> ProxySettings {
    let mut s = ProxySettings {
        namespace: "istioinaction".into(),
        ..ProxySettings::default()
    };
    s.identity.namespace = "istioinaction".into();
    s.identity.labels = BTreeMap::from([("app".into(), "webapp".into())]);
    s
}

/// Parses and validates a file-mode config. Never panics (that is what is fuzzed).
pub fn parse_and_build(data: &[u8]) -> Option<Snapshot> {
    let text = std::str::from_utf8(data).ok()?;
    let file: ConfigFile = serde_yaml::from_str(text).ok()?;
    config::build(&file, &settings(), None).ok()
}

fn fallback() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| parse_and_build(FALLBACK.as_bytes()).expect("catalog example is valid"))
}

/// Input layout: `config \0 authority \0 path \0 query \0 method \0 scheme \0 port \0
/// (header-name \0 header-value \0)*`; missing parts are empty.
pub fn route_match(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0);
    let cfg = parts.next().unwrap_or_default();
    let built = parse_and_build(cfg);
    let snap = built.as_ref().unwrap_or_else(|| fallback());
    let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let authority = text();
    let path = text();
    let query = text();
    let method = text();
    let scheme = text();
    let port = text().parse::<u16>().ok();
    let mut headers = HeaderMap::new();
    loop {
        let (Some(name), value) = (parts.next(), parts.next()) else {
            break;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.unwrap_or_default()),
        ) {
            headers.append(n, v);
        }
    }
    let req = RequestView {
        authority: &authority,
        path: &path,
        query: (!query.is_empty()).then_some(query.as_str()),
        method: &method,
        scheme: &scheme,
        port,
        headers: &headers,
    };
    let identities = [snap_identity(), SourceIdentity::default()];
    for source in &identities {
        if let Selection::Route { route, block, .. } = snap.table.select(&req, source) {
            let _ = route.rewritten_path(block, &path);
            let draw = data.len() as u64 * 2_654_435_761;
            let _ = route.destinations.pick(draw);
            let _ = route.destinations.shares().count();
        }
    }
}

fn snap_identity() -> SourceIdentity {
    settings().identity
}

#[cfg(test)]
mod tests {
    /// Replays every file of the seed corpus through both harnesses.
    #[test]
    fn seed_corpus_replays_without_panic() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus");
        let mut n = 0;
        for target in ["config", "route_match"] {
            for entry in std::fs::read_dir(format!("{root}/{target}")).unwrap() {
                let data = std::fs::read(entry.unwrap().path()).unwrap();
                let _ = super::parse_and_build(&data);
                super::route_match(&data);
                n += 1;
            }
        }
        assert!(n > 0);
    }
}
