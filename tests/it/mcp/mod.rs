//! The MCP edge over real HTTP with real children (issue #3).

mod e2e;
mod everything;
mod faults;
pub(crate) mod fixtures;
mod sessions;
mod transport;
