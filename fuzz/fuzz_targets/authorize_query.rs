//! Oracle in `forgejo_mcp_broker::fuzzing::authorize_query_oracle`; corpus replayed by `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| forgejo_mcp_broker::fuzzing::authorize_query_oracle(data));
