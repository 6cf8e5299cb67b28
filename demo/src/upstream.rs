//! A tiny upstream for demos and tests: answers every request 200 with
//! `{"upstream": NAME, "path": PATH, "served": N}` after an optional delay, which
//! holds requests in flight through a DP. `served` counts requests received so
//! far, this one included, so a test can tell how many reached the upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::info;

use crate::http;
use crate::signals::Signals;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

pub async fn run(listen: SocketAddr, name: String, delay: Duration) -> Result<(), UpstreamError> {
    let mut signals = Signals::install().map_err(UpstreamError::Signals)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| UpstreamError::Bind {
            addr: listen,
            source,
        })?;
    info!(%listen, %name, ?delay, "upstream listening");
    let name: Arc<str> = name.into();
    let served = Arc::new(AtomicU64::new(0));
    let handler = move |request: hyper::Request<hyper::body::Incoming>, _peer| {
        let name = name.clone();
        let served = served.fetch_add(1, Ordering::SeqCst) + 1;
        let path = request.uri().path().to_owned();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            http::json(
                StatusCode::OK,
                &json!({ "upstream": &*name, "path": path, "served": served }),
            )
        }
    };
    let stop = async move {
        signals.next().await;
    };
    // A test upstream has nothing worth draining for long.
    http::serve(listener, handler, stop, Duration::from_millis(100)).await;
    Ok(())
}
