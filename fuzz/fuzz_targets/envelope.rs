//! Stored envelope parser; oracle in `vault::fuzzing::envelope_oracle`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vault::fuzzing::envelope_oracle(data));
