//! Oracle in `forgejo_mcp_broker::fuzzing::upstream_version_oracle`; corpus replayed by `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| forgejo_mcp_broker::fuzzing::upstream_version_oracle(data));
