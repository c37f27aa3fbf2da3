//! forgejo-mcp-broker: an OAuth 2.1 authorization server for MCP clients, delegating login to
//! Forgejo, bridging MCP Streamable HTTP to one confined stdio MCP server child per session.
//!
//! Module map (see `../shared/design/ARCHITECTURE.md` §1):
//! - [`oauth`]: the authorization server MCP clients talk to (discovery, DCR, CIMD, consent,
//!   codes, tokens, revocation).
//! - [`upstream`]: the broker as an OAuth2 client of Forgejo, and the per-user token set.
//! - [`mcp`]: Streamable HTTP and legacy HTTP+SSE edge, sessions, routing to children.
//! - [`egress`]: the per-session credential-injecting proxy towards Forgejo.
//! - [`audit`], [`ratelimit`], [`metrics`]: accountability and abuse resistance.
//! - [`keystore`]: the vault's keys at rest (wrapped data keys, master key sources, rotation).
//! - [`auth`], [`store`], [`clock`], [`secret`], [`config`]: seams shared by the above.
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod demo;
pub mod egress;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod keystore;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod ratelimit;
pub mod secret;
pub mod standin;
pub mod store;
pub mod supervisor;
pub mod text;
pub mod upstream;
