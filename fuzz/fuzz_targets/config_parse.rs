//! Arbitrary bytes -> file-mode config parser -> validator (`config::build`).
//! Errors are fine; a panic is a bug.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::parse_and_build;

fuzz_target!(|data: &[u8]| {
    let _ = parse_and_build(data);
});
