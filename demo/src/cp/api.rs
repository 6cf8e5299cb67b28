//! The CP's HTTP API: status, the admin API (routes, export/import, instances) and
//! the DP-facing endpoints (config, heartbeat).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use super::store::{Heartbeat, Store, StoreError};
use crate::http::{self, Body, BodyError};
use crate::manifest::Release;
use crate::model::{Declarative, Plugin, Route};
use crate::version::{Version, dp_compatible};

/// Admin bodies are small; an import of thousands of routes still fits.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

pub struct Cp {
    pub store: Store,
    pub release: Release,
}

/// A route as written to `POST /api/routes` or `PUT /api/routes/{id}`; on PUT the
/// id may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteInput {
    #[serde(default)]
    id: Option<String>,
    path_prefix: String,
    upstream: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    plugins: Vec<Plugin>,
}

pub async fn handle(cp: Arc<Cp>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["healthz"] | ["status"] | ["status", "ready"]) => status(&cp).await,
        (Method::GET, ["api", "routes"]) => list_routes(&cp).await,
        (Method::POST, ["api", "routes"]) => write_route(&cp, request, None).await,
        (Method::GET, ["api", "routes", id]) => get_route(&cp, id).await,
        (Method::PUT, ["api", "routes", id]) => {
            let id = (*id).to_owned();
            write_route(&cp, request, Some(id)).await
        }
        (Method::DELETE, ["api", "routes", id]) => delete_route(&cp, id).await,
        (Method::GET, ["api", "export"]) => export(&cp).await,
        (Method::POST, ["api", "import"]) => import(&cp, request).await,
        (Method::GET, ["api", "instances"]) => instances(&cp).await,
        (Method::GET, ["dp", "config"]) => dp_config(&cp).await,
        (Method::POST, ["dp", "heartbeat"]) => heartbeat(&cp, request).await,
        (
            _,
            ["healthz"]
            | ["status"]
            | ["status", "ready"]
            | ["api", "routes"]
            | ["api", "routes", _]
            | ["api", "export"]
            | ["api", "import"]
            | ["api", "instances"]
            | ["dp", "config"]
            | ["dp", "heartbeat"],
        ) => http::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => http::error(StatusCode::NOT_FOUND, format!("no such endpoint {path}")),
    }
}

fn store_error(error: StoreError) -> Response<Body> {
    match error {
        StoreError::Conflict(detail) => http::error(StatusCode::CONFLICT, detail),
        other => {
            warn!(error = %http::chain(&other), "database request failed");
            http::error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

fn body_error(error: BodyError) -> Response<Body> {
    match error {
        BodyError::TooLarge { .. } => http::error(StatusCode::PAYLOAD_TOO_LARGE, error),
        BodyError::Read(_) => http::error(StatusCode::BAD_REQUEST, error),
    }
}

async fn status(cp: &Cp) -> Response<Body> {
    match cp.store.revision().await {
        Ok(revision) => http::json(
            StatusCode::OK,
            &json!({
                "status": "ok",
                "version": cp.release.version.to_string(),
                "config_revision": revision,
                "ready": true,
                "role": "cp",
                "schema_version": cp.store.level(),
            }),
        ),
        Err(e) => {
            warn!(error = %http::chain(&e), "status: database unavailable");
            http::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({
                    "status": "error",
                    "version": cp.release.version.to_string(),
                    "config_revision": null,
                    "ready": false,
                    "role": "cp",
                    "schema_version": cp.store.level(),
                    "error": "database unavailable",
                }),
            )
        }
    }
}

async fn list_routes(cp: &Cp) -> Response<Body> {
    match cp.store.snapshot().await {
        Ok((revision, routes)) => http::json(
            StatusCode::OK,
            &json!({ "revision": revision, "routes": routes }),
        ),
        Err(e) => store_error(e),
    }
}

async fn get_route(cp: &Cp, id: &str) -> Response<Body> {
    match cp.store.route(id).await {
        Ok(Some(route)) => http::json(StatusCode::OK, &route),
        Ok(None) => http::error(StatusCode::NOT_FOUND, format!("no route {id:?}")),
        Err(e) => store_error(e),
    }
}

async fn write_route(
    cp: &Cp,
    request: Request<Incoming>,
    path_id: Option<String>,
) -> Response<Body> {
    let body = match http::read_body(request, BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => return body_error(e),
    };
    let input: RouteInput = match serde_json::from_slice(&body) {
        Ok(input) => input,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, format!("invalid route JSON: {e}")),
    };
    let id = match (&path_id, input.id) {
        (Some(path), Some(body)) if *path != body => {
            return http::error(
                StatusCode::BAD_REQUEST,
                format!("route id {body:?} in the body differs from {path:?} in the path"),
            );
        }
        (Some(path), _) => path.clone(),
        (None, Some(body)) => body,
        (None, None) => return http::error(StatusCode::BAD_REQUEST, "a new route needs an id"),
    };
    let route = Route {
        id,
        path_prefix: input.path_prefix,
        upstream: input.upstream,
        description: input.description,
        plugins: input.plugins,
    };
    if let Err(e) = route.validate(cp.store.level()) {
        return http::error(StatusCode::BAD_REQUEST, e);
    }
    let replace = path_id.is_some();
    match cp.store.put(&route, replace).await {
        Ok((created, revision)) => {
            info!(route = %route.id, created, revision, "route written");
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            http::json(status, &json!({ "revision": revision, "route": route }))
        }
        Err(e) => store_error(e),
    }
}

async fn delete_route(cp: &Cp, id: &str) -> Response<Body> {
    match cp.store.delete(id).await {
        Ok(Some(revision)) => {
            info!(route = %id, revision, "route deleted");
            http::json(StatusCode::OK, &json!({ "revision": revision }))
        }
        Ok(None) => http::error(StatusCode::NOT_FOUND, format!("no route {id:?}")),
        Err(e) => store_error(e),
    }
}

async fn export(cp: &Cp) -> Response<Body> {
    let routes = match cp.store.snapshot().await {
        Ok((_, routes)) => routes,
        Err(e) => return store_error(e),
    };
    match Declarative::new(routes).to_yaml() {
        Ok(yaml) => http::with_type(StatusCode::OK, "application/yaml", yaml),
        Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn import(cp: &Cp, request: Request<Incoming>) -> Response<Body> {
    let body = match http::read_body(request, BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => return body_error(e),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return http::error(StatusCode::BAD_REQUEST, "the YAML body is not UTF-8");
    };
    let config = match Declarative::from_yaml(text) {
        Ok(config) => config,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = config.validate(cp.store.level()) {
        return http::error(StatusCode::BAD_REQUEST, e);
    }
    match cp.store.replace_all(&config.routes).await {
        Ok(revision) => {
            info!(routes = config.routes.len(), revision, "config imported");
            http::json(
                StatusCode::OK,
                &json!({ "revision": revision, "routes": config.routes.len() }),
            )
        }
        Err(e) => store_error(e),
    }
}

async fn instances(cp: &Cp) -> Response<Body> {
    let rows = match cp.store.instances().await {
        Ok(rows) => rows,
        Err(e) => return store_error(e),
    };
    let cp_version = &cp.release.version;
    let instances: Vec<_> = rows
        .into_iter()
        .map(|row| {
            let compatible = row
                .version
                .parse::<Version>()
                .is_ok_and(|dp| dp_compatible(cp_version, &dp));
            json!({
                "instance_id": row.instance_id,
                "version": row.version,
                "config_revision": row.config_revision,
                "last_seen": row.last_seen,
                "seconds_since_seen": row.seconds_since_seen,
                "compatible": compatible,
            })
        })
        .collect();
    http::json(
        StatusCode::OK,
        &json!({ "cp_version": cp_version.to_string(), "instances": instances }),
    )
}

async fn dp_config(cp: &Cp) -> Response<Body> {
    match cp.store.snapshot().await {
        Ok((revision, routes)) => http::json(
            StatusCode::OK,
            &json!({ "revision": revision, "routes": routes }),
        ),
        Err(e) => store_error(e),
    }
}

async fn heartbeat(cp: &Cp, request: Request<Incoming>) -> Response<Body> {
    let body = match http::read_body(request, 64 * 1024).await {
        Ok(body) => body,
        Err(e) => return body_error(e),
    };
    let beat: Heartbeat = match serde_json::from_slice(&body) {
        Ok(beat) => beat,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, format!("invalid heartbeat: {e}")),
    };
    if beat.instance_id.is_empty() || beat.instance_id.len() > 128 {
        return http::error(
            StatusCode::BAD_REQUEST,
            "instance_id must be 1 to 128 characters",
        );
    }
    match cp.store.heartbeat(&beat).await {
        Ok(()) => http::json(StatusCode::OK, &json!({ "status": "ok" })),
        Err(e) => store_error(e),
    }
}
