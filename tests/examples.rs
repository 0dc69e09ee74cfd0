//! Every Canary under `examples/` is one the controller accepts and its router can
//! render: the docs point at them.

use serde::Deserialize;
use sluice::api::Canary;
use sluice::rollout::ReleaseSpec;
use sluice::router::Routers;

#[test]
fn example_canaries_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let routers = Routers::new("ghcr.io/sluice-dev/sluice-proxy:v1".into(), 2);
    let mut checked = 0;
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_yaml::Value::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if value.get("kind").and_then(|k| k.as_str()) != Some("Canary") {
                    continue;
                }
                let canary: Canary = serde_yaml::from_value(value)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if let Err(err) = ReleaseSpec::from_spec(&canary.spec) {
                    panic!("{}: {err}", path.display());
                }
                let router = routers.for_kind(canary.spec.provider.unwrap_or_default());
                if let Err(err) = router.static_objects(&canary) {
                    panic!("{}: {err}", path.display());
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 5, "only {checked} example Canaries found");
}
