//! Request handling on the DP: its own status endpoints, then proxying by route.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tracing::{debug, warn};

use super::state::DpState;
use crate::http::{self, Body, BoxError, Client};

/// An upstream slower than this gets a 504, so a drain can never hang on it.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// Headers that describe one hop's connection and must not be forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub async fn handle(
    state: Arc<DpState>,
    client: Client,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    match request.uri().path() {
        "/status" => return http::json(StatusCode::OK, &state.status_json()),
        "/status/ready" => {
            let status = if state.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return http::json(status, &state.status_json());
        }
        _ => {}
    }
    let _in_flight = state.begin_request();
    let Some(table) = state.table() else {
        return http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration loaded yet",
        );
    };
    let path = request.uri().path().to_owned();
    let Some(route) = table.find(&path) else {
        return http::error(StatusCode::NOT_FOUND, format!("no route matches {path}"));
    };

    let mut target = route.upstream_path(&path).into_owned();
    if let Some(query) = request.uri().query() {
        target.push('?');
        target.push_str(query);
    }
    let (mut parts, body) = request.into_parts();
    parts.uri = match route.upstream.uri(&target) {
        Ok(uri) => uri,
        Err(e) => {
            return http::error(
                StatusCode::BAD_REQUEST,
                format!("cannot build the upstream URI: {e}"),
            );
        }
    };
    parts.version = hyper::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(host) = HeaderValue::from_str(route.upstream.authority().as_str()) {
        parts.headers.insert(header::HOST, host);
    }
    append_forwarded_for(&mut parts.headers, peer);
    let upstream_request = Request::from_parts(parts, body.map_err(BoxError::from).boxed());

    let response = match tokio::time::timeout(UPSTREAM_TIMEOUT, client.request(upstream_request))
        .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            warn!(route = %route.id, upstream = %route.upstream.authority(), error = %http::chain(&e), "upstream request failed");
            return http::error(StatusCode::BAD_GATEWAY, "upstream unavailable");
        }
        Err(_) => {
            warn!(route = %route.id, upstream = %route.upstream.authority(), "upstream timed out");
            return http::error(StatusCode::GATEWAY_TIMEOUT, "upstream timed out");
        }
    };
    debug!(route = %route.id, status = %response.status(), "proxied");
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    for (name, value) in &route.response_headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {ip}"),
        None => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
}
