//! `[rate_limits]` and `[limits]`: rates per endpoint class and the generic HTTP caps.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigErrors, Validate};

/// One GCRA rate: `burst` requests at once, then one every `period / burst`.
///
/// Written `"20/h"` (20 per hour), `"60/min"`, `"5/s"`, `"100/d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: NonZeroU32,
    pub period: Duration,
}

impl Rate {
    pub const fn new(burst: u32, period_secs: u64) -> Self {
        Self {
            burst: match NonZeroU32::new(burst) {
                Some(burst) => burst,
                None => NonZeroU32::MIN,
            },
            period: Duration::from_secs(period_secs),
        }
    }

    /// The governor quota: the whole burst available at once, one cell back every
    /// `period / burst` (the TypeScript SDK's "20 per hour" window, smoothed by GCRA).
    pub fn quota(&self) -> Option<governor::Quota> {
        let replenish = self.period.checked_div(self.burst.get())?;
        governor::Quota::with_period(replenish).map(|quota| quota.allow_burst(self.burst))
    }
}

impl TryFrom<&str> for Rate {
    type Error = String;

    fn try_from(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!("invalid rate {text:?}: expected e.g. \"20/h\", \"60/min\", \"5/s\", \"100/d\"")
        };
        let (count, unit) = text.trim().split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        let burst = NonZeroU32::new(count).ok_or_else(invalid)?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(invalid()),
        };
        Ok(Self {
            burst,
            period: Duration::from_secs(period),
        })
    }
}

/// Zero or more rates applied together (all must allow). `"off"` or `[]` disables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rates(pub Vec<Rate>);

impl<'de> Deserialize<'de> for Rates {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum RawRates {
            One(String),
            Many(Vec<String>),
        }
        let texts = match RawRates::deserialize(deserializer)? {
            RawRates::One(text) if text.trim() == "off" => Vec::new(),
            RawRates::One(text) => vec![text],
            RawRates::Many(texts) => texts,
        };
        texts
            .iter()
            .map(|text| Rate::try_from(text.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map(Rates)
            .map_err(serde::de::Error::custom)
    }
}

/// Limits of one endpoint class; a missing key keeps the class's default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassLimitsConfig {
    pub per_ip: Option<Rates>,
    pub per_client: Option<Rates>,
    pub per_user: Option<Rates>,
}

/// `[rate_limits]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Most keys (addresses, client ids, users) one limiter remembers; beyond it the least
    /// throttled key is forgotten. Bounds memory against address rotation.
    pub max_keys: usize,
    pub register: ClassLimitsConfig,
    pub token: ClassLimitsConfig,
    pub authorize: ClassLimitsConfig,
    pub consent: ClassLimitsConfig,
    pub revoke: ClassLimitsConfig,
    pub cimd_fetch: ClassLimitsConfig,
    pub mcp_session: ClassLimitsConfig,
    pub mcp: ClassLimitsConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            max_keys: 16_384,
            register: ClassLimitsConfig::default(),
            token: ClassLimitsConfig::default(),
            authorize: ClassLimitsConfig::default(),
            consent: ClassLimitsConfig::default(),
            revoke: ClassLimitsConfig::default(),
            cimd_fetch: ClassLimitsConfig::default(),
            mcp_session: ClassLimitsConfig::default(),
            mcp: ClassLimitsConfig::default(),
        }
    }
}

impl Validate for RateLimitConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        if self.max_keys < 16 {
            errors.push("rate_limits.max_keys", "must be at least 16");
        }
        if self.max_keys > 10_000_000 {
            errors.push("rate_limits.max_keys", "must be at most 10000000");
        }
    }
}

/// `[limits]` section: caps that protect every endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimitsConfig {
    /// Largest request body read by any endpoint (larger: 413).
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers); larger: 431.
    pub max_header_bytes: usize,
    /// Time a client has to send its complete request head; then the connection is dropped
    /// (slowloris).
    pub header_read_timeout_secs: u64,
    /// Longest pause while a client sends a request body; then the request fails and the
    /// connection is dropped.
    pub body_read_timeout_secs: u64,
    /// Longest time a client may take to send a whole request body, however steadily it
    /// trickles (the per-pause timeout alone lets one byte every few seconds hold a connection
    /// for days).
    pub body_total_timeout_secs: u64,
    /// Open connections in total. At the cap the broker stops accepting (new connections wait
    /// in the kernel's backlog) until one closes: each holds a file descriptor, and a full
    /// descriptor table would stop children, the database and the audit log too.
    pub max_connections: usize,
    /// Open connections per client address (an IPv4 address or an IPv6 /64, as rate limits
    /// key them); one more is closed at once. `server.trusted_proxies` are exempt: a reverse
    /// proxy carries everyone's connections.
    pub max_connections_per_ip: usize,
    /// Longest time data the broker sent may stay unacknowledged (a client that stopped
    /// reading, a zero window) before the kernel drops the connection (`TCP_USER_TIMEOUT`).
    pub send_timeout_secs: u64,
}

impl Default for HttpLimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            body_total_timeout_secs: 120,
            max_connections: 1024,
            max_connections_per_ip: 128,
            send_timeout_secs: 60,
        }
    }
}

impl HttpLimitsConfig {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }

    pub fn body_total_timeout(&self) -> Duration {
        Duration::from_secs(self.body_total_timeout_secs)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout_secs)
    }
}

impl Validate for HttpLimitsConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        if self.max_body_bytes < 1024 {
            errors.push("limits.max_body_bytes", "must be at least 1024");
        }
        // hyper's read buffer cannot be smaller than 8 KiB.
        if !(8192..=1024 * 1024).contains(&self.max_header_bytes) {
            errors.push(
                "limits.max_header_bytes",
                "must be between 8192 and 1048576",
            );
        }
        if self.header_read_timeout_secs == 0 {
            errors.push("limits.header_read_timeout_secs", "must be positive");
        }
        if self.body_read_timeout_secs == 0 {
            errors.push("limits.body_read_timeout_secs", "must be positive");
        }
        if self.body_total_timeout_secs < self.body_read_timeout_secs {
            errors.push(
                "limits.body_total_timeout_secs",
                "must be at least limits.body_read_timeout_secs",
            );
        }
        if self.max_connections == 0 {
            errors.push("limits.max_connections", "must be positive");
        }
        if self.max_connections_per_ip == 0 {
            errors.push("limits.max_connections_per_ip", "must be positive");
        }
        if !(1..=3600).contains(&self.send_timeout_secs) {
            errors.push("limits.send_timeout_secs", "must be between 1 and 3600");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_every_spelling() {
        let rate = Rate::try_from("20/h").unwrap();
        assert_eq!(rate, Rate::new(20, 3600));
        assert_eq!(Rate::try_from(" 5 / s ").unwrap(), Rate::new(5, 1));
        assert_eq!(Rate::try_from("60/min").unwrap(), Rate::new(60, 60));
        assert_eq!(Rate::try_from("100/day").unwrap(), Rate::new(100, 86_400));
        for bad in ["", "20", "0/h", "x/h", "20/week", "-1/s"] {
            assert!(Rate::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_accept_one_many_or_off() {
        #[derive(Deserialize)]
        struct T {
            a: Rates,
            b: Rates,
            c: Rates,
        }
        let t: T = toml::from_str("a = \"20/h\"\nb = [\"20/h\", \"100/d\"]\nc = \"off\"").unwrap();
        assert_eq!(t.a.0.len(), 1);
        assert_eq!(t.b.0, vec![Rate::new(20, 3600), Rate::new(100, 86_400)]);
        assert!(t.c.0.is_empty());
        assert!(toml::from_str::<T>("a = \"2/fortnight\"\nb = []\nc = []").is_err());
    }

    #[test]
    fn quota_spreads_the_period_over_the_burst() {
        let quota = Rate::new(20, 3600).quota().unwrap();
        assert_eq!(quota.replenish_interval(), Duration::from_secs(180));
        assert_eq!(quota.burst_size().get(), 20);
    }
}
