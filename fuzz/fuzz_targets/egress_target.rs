//! Oracle in `forgejo_mcp_broker::fuzzing::egress_target_oracle`; corpus replayed by `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| forgejo_mcp_broker::fuzzing::egress_target_oracle(data));
