//! Key-file parser; oracle in `vault::fuzzing::key_file_oracle`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vault::fuzzing::key_file_oracle(data));
