//! Arbitrary bytes -> (config, request); the table built from the config (or from the
//! bundled catalog config when the fuzzed one is invalid) matches the request.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_fuzz::route_match(data);
});
