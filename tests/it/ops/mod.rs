//! Abuse resistance and accountability (issue #7): rate limits, HTTP caps, metrics, audit log.

mod admin;
mod audit;
mod flow;
mod http_limits;
mod logs;
mod metrics;
mod ratelimit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use forgejo_mcp_broker::audit::MemoryAudit;
use forgejo_mcp_broker::http::{self, HttpOptions};
use forgejo_mcp_broker::metrics::Metrics;
use forgejo_mcp_broker::ratelimit::HttpLimitsConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A router served exactly as the broker serves its public one (common layers, hyper with the
/// configured caps), on 127.0.0.1 with an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics: Metrics,
    #[allow(dead_code)] // Kept alive for the sinks the routes were built with.
    pub audit: Arc<MemoryAudit>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(routes: Router, limits: HttpLimitsConfig) -> Self {
        Self::start_with(routes, limits, Metrics::new(), MemoryAudit::new()).await
    }

    pub async fn start_with(
        routes: Router,
        limits: HttpLimitsConfig,
        metrics: Metrics,
        audit: Arc<MemoryAudit>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = HttpOptions {
            limits: limits.clone(),
            metrics: metrics.clone(),
        };
        let router = http::router([routes], &options);
        let cancel = CancellationToken::new();
        let shutdown = cancel.clone();
        let task = tokio::spawn(async move {
            http::serve(
                listener,
                router,
                &limits,
                &[],
                shutdown,
                Duration::from_secs(2),
            )
            .await;
        });
        Self {
            addr,
            metrics,
            audit,
            cancel,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops within its drain deadline")
            .unwrap();
    }
}

/// A reqwest client whose connections come from `source` (127.0.0.x are all loopback, so a
/// test can be several clients at once).
pub fn client_from(source: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(source))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}
