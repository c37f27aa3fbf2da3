//! The one integration-test binary (STYLE.md habit 11). Modules per concern; shared fixtures
//! (fake Forgejo, temporary data dirs, children) in `fixtures`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod demo_child;
mod e2e;
mod fixtures;
mod mcp;
mod oauth;
mod ops;
mod smoke;
mod standin;
mod vault;
mod vault_ops;
