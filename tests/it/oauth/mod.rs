//! The OAuth half over real HTTP (issue #2): discovery, DCR, CIMD, authorize → consent →
//! Forgejo → callback, tokens, revocation, upstream refresh, and leak checks.

mod authorize;
mod cimd;
mod conformance;
mod discovery;
mod examples;
mod leaks;
mod registration;
mod tokens;
mod upstream;
