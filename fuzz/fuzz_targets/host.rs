//! See `stackinit::fuzzing::host` for the input's form and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stackinit::fuzzing::host(data));
