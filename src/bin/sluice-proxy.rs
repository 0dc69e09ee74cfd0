//! sluice-proxy (work in progress).
fn main() {}
