//! Operator subcommands beyond `serve` (binary-only; `anyhow` is allowed here).

pub mod admin;
pub mod audit;
