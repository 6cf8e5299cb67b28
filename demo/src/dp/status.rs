//! The status API the APISIX way, on its own port: `GET /status` answers
//! `{"status":"ok"}`; `GET /status/ready` answers 200 `{"status":"ok"}` once
//! the configuration is loaded and 503 `{"status":"error","error":...}`
//! before. The version is not in the bodies: it is in the `Server` header
//! (`APISIX/<version>`), as APISIX reports it.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, SERVER};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::state::DpState;
use crate::http::{self, Body};

pub async fn handle(state: Arc<DpState>, request: Request<Incoming>) -> Response<Body> {
    let mut response = match request.uri().path() {
        "/status" => http::json(StatusCode::OK, &json!({ "status": "ok" })),
        "/status/ready" if state.ready() => http::json(StatusCode::OK, &json!({ "status": "ok" })),
        "/status/ready" => http::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "error", "error": "the configuration is not loaded yet" }),
        ),
        other => http::error(StatusCode::NOT_FOUND, format!("no status API at {other}")),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("APISIX/{}", state.version)) {
        response.headers_mut().insert(SERVER, v);
    }
    response
}
