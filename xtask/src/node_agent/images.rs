//! Maps container image references to local programs (there is no container runtime).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ImageMapError {
    #[error("cannot read image map {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid image map {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("image map {path}: entry '{pattern}' lists no program")]
    NoProgram { path: PathBuf, pattern: String },
}

/// One `images:` entry of the mapping file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMapping {
    /// Glob (`*` only) matched against the image name without tag or digest.
    pub image: String,
    /// Candidate program paths (relative ones are resolved against the repo root);
    /// the most recently modified existing one runs, so a fresh debug build wins
    /// over a stale release build and vice versa.
    pub program: Vec<String>,
    /// Default arguments, used when the container sets neither command nor args.
    #[serde(default)]
    pub args: Vec<String>,
    /// Default environment; the container's own env overrides it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageMapFile {
    images: Vec<ImageMapping>,
}

#[derive(Debug, Clone)]
pub struct ImageMap {
    mappings: Vec<ImageMapping>,
    base_dir: PathBuf,
}

/// An image reference split into name and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub name: String,
    pub tag: String,
}

impl ImageRef {
    /// Splits `registry:5000/repo/name:tag@sha256:...`; the tag defaults to `latest`.
    pub fn parse(image: &str) -> Self {
        let without_digest = image.split('@').next().unwrap_or(image);
        let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
        match without_digest[last_slash..].rfind(':') {
            Some(colon) => {
                let split = last_slash + colon;
                Self {
                    name: without_digest[..split].to_string(),
                    tag: without_digest[split + 1..].to_string(),
                }
            }
            None => Self {
                name: without_digest.to_string(),
                tag: "latest".to_string(),
            },
        }
    }
}

/// What to run for an image, before the container's command/args are applied.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub mapping: ImageMapping,
    /// The candidate that exists, or None with the candidates that were tried.
    pub program: Result<PathBuf, Vec<PathBuf>>,
}

impl ImageMap {
    pub fn load(path: &Path, base_dir: &Path) -> Result<Self, ImageMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImageMapError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ImageMapFile =
            serde_yaml::from_str(&text).map_err(|source| ImageMapError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if let Some(empty) = file.images.iter().find(|m| m.program.is_empty()) {
            return Err(ImageMapError::NoProgram {
                path: path.to_path_buf(),
                pattern: empty.image.clone(),
            });
        }
        Ok(Self {
            mappings: file.images,
            base_dir: base_dir.to_path_buf(),
        })
    }

    /// The first mapping whose pattern matches the image name, with its program resolved.
    pub fn resolve(&self, image: &ImageRef) -> Option<ResolvedImage> {
        let mapping = self
            .mappings
            .iter()
            .find(|m| glob_match(&m.image, &image.name))?;
        Some(ResolvedImage {
            mapping: mapping.clone(),
            program: self.pick_program(&mapping.program),
        })
    }

    fn pick_program(&self, candidates: &[String]) -> Result<PathBuf, Vec<PathBuf>> {
        let paths: Vec<PathBuf> = candidates
            .iter()
            .map(|c| {
                let p = Path::new(c);
                if p.is_absolute() || !c.contains('/') {
                    // A bare name such as `python3` is looked up on PATH.
                    which(c).unwrap_or_else(|| p.to_path_buf())
                } else {
                    self.base_dir.join(p)
                }
            })
            .collect();
        paths
            .iter()
            .filter_map(|p| {
                let modified = std::fs::metadata(p).ok()?.modified().ok()?;
                Some((modified, p.clone()))
            })
            .max_by_key(|(modified, _)| *modified)
            .map(|(_, p)| p)
            .ok_or(paths)
    }
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Matches `text` against `pattern` where `*` matches any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_references() {
        assert_eq!(
            ImageRef::parse("ghcr.io/acme/sluice-demo:v2"),
            ImageRef {
                name: "ghcr.io/acme/sluice-demo".into(),
                tag: "v2".into()
            }
        );
        assert_eq!(
            ImageRef::parse("localhost:5000/sluice-proxy"),
            ImageRef {
                name: "localhost:5000/sluice-proxy".into(),
                tag: "latest".into()
            }
        );
        assert_eq!(ImageRef::parse("demo:1.0@sha256:abc").tag, "1.0");
    }

    #[test]
    fn globs_match_with_stars() {
        assert!(glob_match("*sluice-demo", "ghcr.io/acme/sluice-demo"));
        assert!(glob_match("sluice-demo", "sluice-demo"));
        assert!(!glob_match("sluice-demo", "sluice-demo2"));
        assert!(glob_match("*/catalog*", "docker.io/istioinaction/catalog"));
        assert!(!glob_match("*sluice-proxy", "sluice-demo"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c"));
    }

    #[test]
    fn repository_image_map_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let map = ImageMap::load(&root.join("hack/cluster/images.yaml"), &root)
            .expect("hack/cluster/images.yaml parses");
        let test_image = map
            .resolve(&ImageRef::parse("sluice-test-http:v1"))
            .expect("test image is mapped");
        assert!(test_image.mapping.args.iter().any(|a| a == "http.server"));
        let demo = map
            .resolve(&ImageRef::parse("example.com/sluice-demo:v2"))
            .expect("demo image is mapped");
        assert!(demo
            .mapping
            .program
            .iter()
            .any(|p| p.ends_with("sluice-demo")));
    }
}
