//! The MCP edge over real HTTP with real children (issue #3).

mod everything;
mod faults;
pub(crate) mod fixtures;
mod sessions;
mod transport;
