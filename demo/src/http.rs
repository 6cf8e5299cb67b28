//! HTTP plumbing shared by the CP, the DP and the upstream: body type, JSON
//! responses, `http://host:port` URLs, and a server loop that can drain gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{Instrument, debug, warn};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: small buffered ones and streamed upstream bodies alike.
pub type Body = BoxBody<Bytes, BoxError>;
/// The client the DP proxies with and polls the CP with (plain HTTP/1.1).
pub type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    with_type(status, "application/json", bytes)
}

pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "error": message.to_string(), "status": status.as_u16() }),
    )
}

pub fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An error and its sources on one line (`client error: connection refused`):
/// hyper's own messages are terse without their causes.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("cannot read request body: {0}")]
    Read(BoxError),
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Read(e)),
    }
}

/// An `http://host:port` base URL (no path, no TLS): the form of `cp_url` and of
/// route upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    authority: hyper::http::uri::Authority,
}

#[derive(Debug, thiserror::Error)]
#[error("{input:?} is not an http://host:port URL: {reason}")]
pub struct UrlError {
    input: String,
    reason: &'static str,
}

impl UpstreamUrl {
    pub fn parse(input: &str) -> Result<UpstreamUrl, UrlError> {
        let err = |reason| UrlError {
            input: input.to_owned(),
            reason,
        };
        let rest = input
            .strip_prefix("http://")
            .ok_or_else(|| err("only http:// is supported"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err("it must not have a path, query or user info"));
        }
        let authority: hyper::http::uri::Authority =
            rest.parse().map_err(|_| err("bad host or port"))?;
        if authority.port_u16().is_none() {
            return Err(err("a port is required"));
        }
        if authority.host().is_empty() {
            return Err(err("a host is required"));
        }
        Ok(UpstreamUrl { authority })
    }

    pub fn authority(&self) -> &hyper::http::uri::Authority {
        &self.authority
    }

    /// The absolute URI of `path_and_query` (which starts with `/`) on this host.
    pub fn uri(&self, path_and_query: &str) -> Result<hyper::Uri, hyper::http::Error> {
        hyper::Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

/// How a graceful drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished its in-flight request and closed.
    All,
    /// The timeout passed with connections still busy; they are abandoned.
    TimedOut,
}

/// Serves HTTP/1.1 on `listener` until `stop` completes, then drains: the listener
/// is closed at once (new connections are refused), idle keep-alive connections are
/// closed, busy ones finish their current request with `Connection: close`, for at
/// most `drain_timeout`.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    stop: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> Drained
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    let graceful = GracefulShutdown::new();
    // Connection tasks log under the server's span (role, version).
    let span = tracing::Span::current();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let service = hyper::service::service_fn(move |request| {
                    let response = handler(request, peer);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(
                    async move {
                        if let Err(e) = connection.await {
                            debug!(%peer, error = %chain(&e), "connection ended with an error");
                        }
                    }
                    .instrument(span.clone()),
                );
            }
        }
    }
    // Closing the listening socket makes the kernel refuse new connections at once.
    drop(listener);
    match tokio::time::timeout(drain_timeout, graceful.shutdown()).await {
        Ok(()) => Drained::All,
        Err(_) => Drained::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_are_host_and_port_only() {
        let url = UpstreamUrl::parse("http://127.0.0.1:8081").unwrap();
        assert_eq!(
            url.uri("/a?b=1").unwrap().to_string(),
            "http://127.0.0.1:8081/a?b=1"
        );
        assert!(UpstreamUrl::parse("http://127.0.0.1:8081/").is_ok());
        for bad in [
            "https://x:1",
            "http://x",
            "http://x:1/path",
            "127.0.0.1:80",
            "http://u@x:1",
            "http://:80",
        ] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
