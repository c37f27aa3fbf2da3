//! Real MCP servers under the full sandbox (filled below).
