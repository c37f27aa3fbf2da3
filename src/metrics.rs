//! Prometheus metrics (issue #7): bounded-cardinality labels only, never user or client ids.

use serde::Deserialize;

use crate::config::{ConfigErrors, Validate};

/// `[metrics]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served; `None` disables it. Kept off the public listener by default.
    pub listen: Option<std::net::SocketAddr>,
}

impl Validate for MetricsConfig {
    fn validate(&self, _errors: &mut ConfigErrors) {}
}
