//! The per-IP limit as a tower layer, and the client address behind trusted proxies.

use std::convert::Infallible;
use std::future::Ready;
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use tower::{Layer, Service};

use super::{EndpointClass, RateKey, SharedRateLimiter};

/// The client's address as the broker believes it (see [`client_ip`]); put into the request's
/// extensions by [`RateLimitLayer`] so handlers can read it with `Extension<ClientIp>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The address of the client: the TCP peer, or, when the peer is one of `trusted_proxies`, the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Entries left of that
/// are client-supplied and never believed; an unparsable entry stops the walk (everything left
/// of it is untrusted). Without a peer address (no `ConnectInfo`) every client shares
/// `0.0.0.0`, which fails closed.
///
/// Addresses are compared in canonical form: on a dual-stack listener an IPv4 proxy connects as
/// `::ffff:10.0.0.5`, which must still match a configured `10.0.0.5`. Entries are split as
/// bytes: a client's non-ASCII bytes in the part of the header it wrote must not make the
/// whole header (and the proxy's own entry after them) unreadable.
pub fn client_ip(headers: &HeaderMap, peer: Option<IpAddr>, trusted_proxies: &[IpAddr]) -> IpAddr {
    let Some(peer) = peer.map(|peer| peer.to_canonical()) else {
        return IpAddr::from([0, 0, 0, 0]);
    };
    let trusted = |address: &IpAddr| {
        trusted_proxies
            .iter()
            .any(|proxy| proxy.to_canonical() == *address)
    };
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let entries: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .collect();
    for entry in entries.iter().rev() {
        let Some(address) = std::str::from_utf8(entry)
            .ok()
            .and_then(|text| text.trim().parse::<IpAddr>().ok())
        else {
            break;
        };
        client = address.to_canonical();
        if !trusted(&client) {
            break;
        }
    }
    client
}

/// Limits a route per client IP for `class`:
/// `post(handler).layer(ratelimit::layer(&limiter, EndpointClass::Token))`.
pub fn layer(limiter: &SharedRateLimiter, class: EndpointClass) -> RateLimitLayer {
    RateLimitLayer {
        limiter: SharedRateLimiter::clone(limiter),
        class,
    }
}

#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: SharedRateLimiter,
    class: EndpointClass,
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: SharedRateLimiter::clone(&self.limiter),
            class: self.class,
        }
    }
}

#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: SharedRateLimiter,
    class: EndpointClass,
}

impl<S> Service<Request> for RateLimitService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| address.ip());
        let ip = client_ip(request.headers(), peer, self.limiter.trusted_proxies());
        match self.limiter.check(self.class, &RateKey::ip(ip)) {
            Ok(()) => {
                request.extensions_mut().insert(ClientIp(ip));
                Either::Right(self.inner.call(request))
            }
            Err(limited) => Either::Left(std::future::ready(Ok(limited.into_response()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        assert_eq!(
            client_ip(&headers, Some(ip("203.0.113.9")), &[ip("10.0.0.1")]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn forwarded_for_from_a_trusted_proxy_yields_the_rightmost_untrusted_entry() {
        let mut headers = HeaderMap::new();
        // The client forged the first entry; the outer proxy 10.0.0.2 appended the real one.
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 198.51.100.7, 10.0.0.2"),
        );
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        assert_eq!(
            client_ip(&headers, Some(ip("10.0.0.1")), &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_proxy_seen_through_a_dual_stack_listener_is_still_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        assert_eq!(
            client_ip(&headers, Some(ip("::ffff:10.0.0.1")), &[ip("10.0.0.1")]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_clients_non_ascii_bytes_do_not_hide_the_entry_the_proxy_appended() {
        let mut headers = HeaderMap::new();
        // nginx's `$proxy_add_x_forwarded_for`: the client's own header, then the real address.
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.7").unwrap(),
        );
        assert_eq!(
            client_ip(&headers, Some(ip("10.0.0.1")), &[ip("10.0.0.1")]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn garbage_in_forwarded_for_stops_the_walk() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        headers.append("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        let trusted = [ip("10.0.0.1")];
        assert_eq!(
            client_ip(&headers, Some(ip("10.0.0.1")), &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(client_ip(&HeaderMap::new(), None, &trusted), ip("0.0.0.0"));
    }
}
