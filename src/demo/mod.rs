//! `forgejo-mcp-broker demo` (issue #4): the whole chain on one machine with an embedded
//! stand-in Forgejo and a built-in demo MCP child.

pub mod child;
