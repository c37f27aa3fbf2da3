//! Rate limits (issue #7, ARCHITECTURE.md §6): GCRA (governor) per client IP, per client id and
//! per user, for each endpoint class, with bounded key memory ([`store::BoundedStore`]).
//!
//! Integration:
//! - per client IP, as a layer on a route (one line per route):
//!   `.route("/oauth/token", post(token).layer(ratelimit::layer(&limiter, EndpointClass::Token)))`
//!   The layer also puts the resolved [`ClientIp`] into the request's extensions.
//! - per client id or per user, inside a handler once the key is known:
//!   `limiter.check(EndpointClass::Token, &RateKey::client(&client_id))?` — the
//!   [`RateLimited`] error is a response (OAuth JSON for OAuth classes, JSON-RPC for MCP ones).
//!
//! Exceeding answers 429 with `Retry-After` (RFC 6585 §4, RFC 9110 §10.2.3). Each rejection is
//! counted in metrics; trips are audited, with a global budget so a flood cannot flood the
//! audit log too.

mod config;
mod layer;
mod response;
pub mod store;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{Quota, RateLimiter as Gcra};
use sha2::{Digest, Sha256};

pub use self::config::{ClassLimitsConfig, HttpLimitsConfig, Rate, RateLimitConfig, Rates};
pub use self::layer::{ClientIp, RateLimitLayer, RateLimitService, client_ip, layer};
pub use self::response::{jsonrpc_too_many_requests, oauth_too_many_requests};
use self::store::BoundedStore;
use crate::audit::{AuditEvent, SharedAudit};
use crate::auth::UserId;
use crate::metrics::Metrics;

/// The endpoints (or actions) a limit applies to. Root aliases (`/token`, `/register`, ...)
/// share their `/oauth/...` endpoint's class, so aliasing does not double a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointClass {
    /// Dynamic client registration (RFC 7591).
    Register,
    Token,
    Authorize,
    Consent,
    /// Token revocation (RFC 7009).
    Revoke,
    /// Fetching a client ID metadata document: each one makes the broker fetch a URL.
    CimdFetch,
    /// Opening a new MCP session (spawns a child: the most expensive thing a client can ask).
    McpSession,
    /// Any request on `/mcp`.
    Mcp,
}

impl EndpointClass {
    pub const ALL: [Self; 8] = [
        Self::Register,
        Self::Token,
        Self::Authorize,
        Self::Consent,
        Self::Revoke,
        Self::CimdFetch,
        Self::McpSession,
        Self::Mcp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Token => "token",
            Self::Authorize => "authorize",
            Self::Consent => "consent",
            Self::Revoke => "revoke",
            Self::CimdFetch => "cimd_fetch",
            Self::McpSession => "mcp_session",
            Self::Mcp => "mcp",
        }
    }

    /// MCP classes answer with a JSON-RPC error, the others with an OAuth error.
    pub fn is_mcp(self) -> bool {
        matches!(self, Self::McpSession | Self::Mcp)
    }

    /// Defaults a small instance can keep: a human clicking through login, a client refreshing
    /// hourly and a few agents working never come near them; a script hammering does.
    fn defaults(self) -> [Vec<Rate>; 3] {
        let hour = 3600;
        let minute = 60;
        let day = 86_400;
        match self {
            // As the TypeScript SDK's router: 20 registrations per hour per IP; plus a daily
            // cap on registered clients per IP (issue #7).
            Self::Register => [
                vec![Rate::new(20, hour), Rate::new(100, day)],
                vec![],
                vec![],
            ],
            // Per client: checked only for a client that authenticated with its secret (a client
            // id is public, so a public client gets none), and generous: it catches a runaway
            // client, not an attacker (per IP does that).
            Self::Token => [
                vec![Rate::new(60, minute)],
                vec![Rate::new(600, minute)],
                vec![],
            ],
            // No per-client limit on authorize by default: one popular client id (Claude's
            // metadata URL) is shared by every user, so anyone could spend its budget.
            Self::Authorize => [vec![Rate::new(30, minute)], vec![], vec![]],
            Self::Consent => [vec![Rate::new(30, minute)], vec![], vec![]],
            Self::Revoke => [
                vec![Rate::new(60, minute)],
                vec![Rate::new(600, minute)],
                vec![],
            ],
            // Per document URL. A fetch happens while authorizing, so the `authorize` per-IP
            // limit is the per-IP one.
            Self::CimdFetch => [vec![], vec![Rate::new(10, minute)], vec![]],
            // Per user is the meaningful limit (a session spawns a child). Per IP is loose:
            // hosted clients (Claude.ai, ChatGPT) reach the broker from a few shared backend
            // addresses, so one IP carries every user of that client (checklist item 157).
            Self::McpSession => [
                vec![Rate::new(300, hour)],
                vec![],
                vec![Rate::new(60, hour)],
            ],
            Self::Mcp => [
                vec![Rate::new(600, minute)],
                vec![],
                vec![Rate::new(600, minute)],
            ],
        }
    }

    fn configured(self, config: &RateLimitConfig) -> &ClassLimitsConfig {
        match self {
            Self::Register => &config.register,
            Self::Token => &config.token,
            Self::Authorize => &config.authorize,
            Self::Consent => &config.consent,
            Self::Revoke => &config.revoke,
            Self::CimdFetch => &config.cimd_fetch,
            Self::McpSession => &config.mcp_session,
            Self::Mcp => &config.mcp,
        }
    }
}

/// What a limit is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Ip,
    Client,
    User,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Client => "client",
            Self::User => "user",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Ip => 0,
            Self::Client => 1,
            Self::User => 2,
        }
    }
}

/// A rate-limit key. Fixed size whatever the client sends, so key memory is bounded in bytes
/// as well as in count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// An IPv4 address, or an IPv6 /64 (one subscriber usually holds a whole /64, so keying by
    /// full address would let one host rotate through 2^64 keys).
    Ip(IpAddr),
    /// The first 16 bytes of SHA-256 of the client id (client ids are client-chosen text).
    Client([u8; 16]),
    User(UserId),
}

/// The part of a client address that names one subscriber: an IPv4 address (an IPv4-mapped
/// IPv6 one folded to it), or an IPv6 /64. Everything keyed per client address uses it.
pub fn subscriber_prefix(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl RateKey {
    pub fn ip(address: IpAddr) -> Self {
        Self::Ip(subscriber_prefix(address))
    }

    pub fn client(client_id: &str) -> Self {
        let digest = Sha256::digest(client_id.as_bytes());
        let mut key = [0u8; 16];
        for (slot, byte) in key.iter_mut().zip(digest.iter()) {
            *slot = *byte;
        }
        Self::Client(key)
    }

    pub fn user(user_id: UserId) -> Self {
        Self::User(user_id)
    }

    pub fn kind(&self) -> KeyKind {
        match self {
            Self::Ip(_) => KeyKind::Ip,
            Self::Client(_) => KeyKind::Client,
            Self::User(_) => KeyKind::User,
        }
    }
}

/// A request refused by a limit. Converts into the 429 response for its class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded on {} per {}", class.as_str(), key_kind.as_str())]
pub struct RateLimited {
    pub class: EndpointClass,
    pub key_kind: KeyKind,
    pub retry_after: Duration,
}

impl RateLimited {
    /// Whole seconds for `Retry-After`, rounded up and at least 1 (a 0 invites a retry storm).
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let rounded = if self.retry_after.subsec_nanos() > 0 {
            secs.saturating_add(1)
        } else {
            secs
        };
        rounded.max(1)
    }
}

type KeyedGcra = Gcra<RateKey, BoundedStore<RateKey>, DefaultClock>;
type DirectGcra = Gcra<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock>;

struct Limit {
    gcra: KeyedGcra,
    /// The same memory the limiter uses, for counting keys.
    store: BoundedStore<RateKey>,
}

/// All limiters of the broker; share it as [`SharedRateLimiter`].
pub struct RateLimiter {
    /// `limits[class][key kind]`: every rate configured for that pair.
    limits: Vec<(EndpointClass, [Vec<Limit>; 3])>,
    clock: DefaultClock,
    trusted_proxies: Arc<[IpAddr]>,
    metrics: Metrics,
    audit: SharedAudit,
    /// One `rate_limited` audit record per (class, key) per [`TRIP_AUDIT_PERIOD`]: the trip,
    /// not every refused request of a flood.
    trip_audit:
        Gcra<(EndpointClass, RateKey), BoundedStore<(EndpointClass, RateKey)>, DefaultClock>,
    /// And at most this many per minute in all, whatever the number of keys.
    audit_budget: DirectGcra,
    checks: AtomicU64,
}

pub type SharedRateLimiter = Arc<RateLimiter>;

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

const TRIP_AUDIT_PERIOD: Duration = Duration::from_secs(600);

const AUDIT_TRIPS_PER_MINUTE: NonZeroU32 = match NonZeroU32::new(60) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

impl RateLimiter {
    pub fn new(
        config: &RateLimitConfig,
        trusted_proxies: &[IpAddr],
        metrics: Metrics,
        audit: SharedAudit,
    ) -> SharedRateLimiter {
        let clock = DefaultClock::default();
        let limits = EndpointClass::ALL
            .iter()
            .map(|&class| {
                let configured = class.configured(config);
                let [ip, client, user] = class.defaults();
                let pick = |value: &Option<Rates>, default: Vec<Rate>| {
                    value
                        .as_ref()
                        .map(|rates| rates.0.clone())
                        .unwrap_or(default)
                        .iter()
                        .filter_map(Rate::quota)
                        .map(|quota| {
                            let store = BoundedStore::new(config.max_keys);
                            Limit {
                                gcra: Gcra::new(quota, store.clone(), clock.clone()),
                                store,
                            }
                        })
                        .collect::<Vec<_>>()
                };
                (
                    class,
                    [
                        pick(&configured.per_ip, ip),
                        pick(&configured.per_client, client),
                        pick(&configured.per_user, user),
                    ],
                )
            })
            .collect();
        let trip_audit_quota =
            Quota::with_period(TRIP_AUDIT_PERIOD).unwrap_or(Quota::per_minute(NonZeroU32::MIN));
        Arc::new(Self {
            limits,
            trip_audit: Gcra::new(
                trip_audit_quota,
                BoundedStore::new(config.max_keys),
                clock.clone(),
            ),
            audit_budget: Gcra::direct_with_clock(
                Quota::per_minute(AUDIT_TRIPS_PER_MINUTE),
                clock.clone(),
            ),
            clock,
            trusted_proxies: trusted_proxies.into(),
            metrics,
            audit,
            checks: AtomicU64::new(0),
        })
    }

    pub fn trusted_proxies(&self) -> &[IpAddr] {
        &self.trusted_proxies
    }

    /// Spends one request of `key` against every limit of `class` for the key's kind.
    pub fn check(&self, class: EndpointClass, key: &RateKey) -> Result<(), RateLimited> {
        let kind = key.kind();
        let Some(limits) = self.limits_for(class, kind) else {
            return Ok(());
        };
        let now = self.clock.now();
        // Every limit is spent even after one refuses: the longest wait is the honest
        // Retry-After, and a refused request still counts towards the daily cap.
        let mut wait: Option<Duration> = None;
        for limit in limits {
            if let Err(not_until) = limit.gcra.check_key(key) {
                let this = not_until.wait_time_from(now);
                wait = Some(wait.map_or(this, |w| w.max(this)));
            }
        }
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(256)
        {
            self.metrics
                .set_rate_limit_tracked_keys(self.tracked_keys());
        }
        match wait {
            None => Ok(()),
            Some(retry_after) => {
                self.metrics
                    .rate_limit_rejected(class.as_str(), kind.as_str());
                if self.trip_audit.check_key(&(class, *key)).is_ok()
                    && self.audit_budget.check().is_ok()
                {
                    self.audit.record(AuditEvent::RateLimited {
                        endpoint: class.as_str().to_owned(),
                        key_kind: kind.as_str().to_owned(),
                        ip: match key {
                            RateKey::Ip(ip) => Some(ip.to_string()),
                            _ => None,
                        },
                    });
                }
                Err(RateLimited {
                    class,
                    key_kind: kind,
                    retry_after,
                })
            }
        }
    }

    /// Keys remembered by all limiters together.
    pub fn tracked_keys(&self) -> usize {
        self.all_limits().map(|limit| limit.store.len()).sum()
    }

    /// The most keys all limiters together can ever remember.
    pub fn key_capacity(&self) -> usize {
        self.all_limits().map(|limit| limit.store.capacity()).sum()
    }

    fn limits_for(&self, class: EndpointClass, kind: KeyKind) -> Option<&[Limit]> {
        self.limits
            .iter()
            .find(|(candidate, _)| *candidate == class)
            .and_then(|(_, by_kind)| by_kind.get(kind.index()))
            .map(Vec::as_slice)
    }

    fn all_limits(&self) -> impl Iterator<Item = &Limit> {
        self.limits
            .iter()
            .flat_map(|(_, by_kind)| by_kind.iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::audit::MemoryAudit;

    fn limiter(config: &RateLimitConfig) -> (SharedRateLimiter, Arc<MemoryAudit>, Metrics) {
        let audit = MemoryAudit::new();
        let metrics = Metrics::new();
        (
            RateLimiter::new(config, &[], metrics.clone(), audit.clone()),
            audit,
            metrics,
        )
    }

    #[test]
    fn registration_allows_twenty_per_hour_per_ip_then_refuses() {
        let (limiter, audit, metrics) = limiter(&RateLimitConfig::default());
        let attacker = RateKey::ip(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
        for _ in 0..20 {
            limiter.check(EndpointClass::Register, &attacker).unwrap();
        }
        let refused = limiter
            .check(EndpointClass::Register, &attacker)
            .unwrap_err();
        assert_eq!(refused.key_kind, KeyKind::Ip);
        // One cell back every 3 minutes.
        assert!(
            (1..=180).contains(&refused.retry_after_secs()),
            "{refused:?}"
        );
        let neighbour = RateKey::ip(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 8)));
        limiter.check(EndpointClass::Register, &neighbour).unwrap();
        assert!(matches!(
            audit.events().as_slice(),
            [AuditEvent::RateLimited { endpoint, key_kind, ip: Some(ip) }]
                if endpoint == "register" && key_kind == "ip" && ip == "203.0.113.7"
        ));
        assert!(
            metrics
                .encode()
                .contains(r#"rate_limit_rejections_total{class="register",key_kind="ip"} 1"#)
        );
    }

    #[test]
    fn ipv6_hosts_in_one_slash_64_share_a_key() {
        let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(RateKey::ip(a.into()), RateKey::ip(b.into()));
        assert_ne!(RateKey::ip(a.into()), RateKey::ip(c.into()));
        let mapped: Ipv6Addr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            RateKey::ip(mapped.into()),
            RateKey::ip(Ipv4Addr::new(192, 0, 2, 1).into())
        );
    }

    #[test]
    fn configured_rates_replace_the_defaults_and_off_disables() {
        let config: RateLimitConfig =
            toml::from_str("[token]\nper_client = \"2/h\"\n[mcp]\nper_user = \"off\"\n").unwrap();
        let (limiter, _, _) = limiter(&config);
        let client = RateKey::client("some-client");
        limiter.check(EndpointClass::Token, &client).unwrap();
        limiter.check(EndpointClass::Token, &client).unwrap();
        assert!(limiter.check(EndpointClass::Token, &client).is_err());
        for _ in 0..1000 {
            limiter
                .check(EndpointClass::Mcp, &RateKey::user(7))
                .unwrap();
        }
    }

    #[test]
    fn address_rotation_keeps_memory_bounded() {
        let config = RateLimitConfig {
            max_keys: 256,
            ..RateLimitConfig::default()
        };
        let (limiter, audit, _) = limiter(&config);
        for n in 0..50_000u32 {
            let key = RateKey::ip(IpAddr::V4(Ipv4Addr::from(n)));
            let _ = limiter.check(EndpointClass::Register, &key);
        }
        assert!(limiter.tracked_keys() <= limiter.key_capacity());
        // Two register limits (hourly, daily) of 256 keys each.
        assert!(limiter.tracked_keys() <= 512, "{}", limiter.tracked_keys());
        assert!(audit.events().is_empty());
    }

    #[test]
    fn audit_records_trips_not_every_refusal_and_has_a_global_budget() {
        let config: RateLimitConfig = toml::from_str("[consent]\nper_ip = \"1/h\"\n").unwrap();
        let (limiter, audit, metrics) = limiter(&config);
        let key = RateKey::ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for _ in 0..1000 {
            let _ = limiter.check(EndpointClass::Consent, &key);
        }
        assert_eq!(audit.events().len(), 1, "one trip of one key");
        assert!(
            metrics
                .encode()
                .contains(r#"rate_limit_rejections_total{class="consent",key_kind="ip"} 999"#)
        );
        // Many keys tripping at once: the global budget caps the audit records.
        for n in 0..1000u32 {
            let key = RateKey::ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)));
            let _ = limiter.check(EndpointClass::Consent, &key);
            let _ = limiter.check(EndpointClass::Consent, &key);
        }
        assert_eq!(audit.events().len(), 60);
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let limited = |retry_after| RateLimited {
            class: EndpointClass::Token,
            key_kind: KeyKind::Ip,
            retry_after,
        };
        assert_eq!(limited(Duration::ZERO).retry_after_secs(), 1);
        assert_eq!(limited(Duration::from_millis(1500)).retry_after_secs(), 2);
        assert_eq!(limited(Duration::from_secs(180)).retry_after_secs(), 180);
    }
}
