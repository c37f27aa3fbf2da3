//! Rate limits (issue #7): GCRA per client IP, per client id and per user, with bounded key
//! memory.

use serde::Deserialize;

use crate::config::{ConfigErrors, Validate};

/// `[rate_limits]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {}

impl Validate for RateLimitConfig {
    fn validate(&self, _errors: &mut ConfigErrors) {}
}
