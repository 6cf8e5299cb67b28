//! The DP's compiled routing table: built once per config revision, then matched
//! per request by longest path prefix.

use hyper::header::{HeaderName, HeaderValue};
use tracing::warn;

use crate::http::UpstreamUrl;
use crate::model::Route;
use crate::plugins::PluginSpec;

#[derive(Debug)]
pub struct CompiledRoute {
    pub id: String,
    pub prefix: String,
    pub upstream: UpstreamUrl,
    pub strip_prefix: bool,
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
pub struct RouteTable {
    pub revision: i64,
    /// Longest prefix first, so the first match is the best one.
    routes: Vec<CompiledRoute>,
}

impl RouteTable {
    /// Compiles what it can; a route this DP cannot run (an unknown plugin from a
    /// newer CP, say) is left out with a warning rather than failing the revision.
    pub fn compile(revision: i64, routes: &[Route]) -> RouteTable {
        let mut compiled: Vec<CompiledRoute> = routes
            .iter()
            .filter_map(|route| match compile_route(route) {
                Ok(compiled) => Some(compiled),
                Err(reason) => {
                    warn!(route = %route.id, revision, %reason, "skipping a route this data plane cannot run");
                    None
                }
            })
            .collect();
        compiled.sort_by(|a, b| b.prefix.len().cmp(&a.prefix.len()).then(a.id.cmp(&b.id)));
        RouteTable {
            revision,
            routes: compiled,
        }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn find(&self, path: &str) -> Option<&CompiledRoute> {
        self.routes
            .iter()
            .find(|route| prefix_matches(&route.prefix, path))
    }
}

fn compile_route(route: &Route) -> Result<CompiledRoute, String> {
    let upstream = UpstreamUrl::parse(&route.upstream).map_err(|e| e.to_string())?;
    let mut strip_prefix = false;
    let mut response_headers = Vec::new();
    for plugin in &route.plugins {
        match PluginSpec::parse(plugin).map_err(|e| e.to_string())? {
            PluginSpec::StripPrefix => strip_prefix = true,
            PluginSpec::ResponseHeader { name, value } => response_headers.push((name, value)),
        }
    }
    Ok(CompiledRoute {
        id: route.id.clone(),
        prefix: route.path_prefix.clone(),
        upstream,
        strip_prefix,
        response_headers,
    })
}

/// `/api` matches `/api` and `/api/x` but not `/apix`; `/api/` and `/` match
/// everything below them.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl CompiledRoute {
    /// The path to send upstream, after `strip-prefix` if the route has it.
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.strip_prefix {
            return path.into();
        }
        let rest = &path[self.prefix.trim_end_matches('/').len().min(path.len())..];
        if rest.starts_with('/') {
            rest.into()
        } else {
            format!("/{rest}").into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Plugin;

    fn route(id: &str, prefix: &str, strip: bool) -> Route {
        Route {
            id: id.into(),
            path_prefix: prefix.into(),
            upstream: "http://127.0.0.1:1".into(),
            description: None,
            plugins: if strip {
                vec![Plugin {
                    name: "strip-prefix".into(),
                    config: serde_json::json!({}),
                }]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let table = RouteTable::compile(
            1,
            &[
                route("root", "/", false),
                route("api", "/api", false),
                route("v2", "/api/v2", false),
            ],
        );
        let id = |path| table.find(path).map(|r| r.id.as_str());
        assert_eq!(id("/api/v2/users"), Some("v2"));
        assert_eq!(id("/api/v2"), Some("v2"));
        assert_eq!(id("/api/v21"), Some("api"));
        assert_eq!(id("/api"), Some("api"));
        assert_eq!(id("/apix"), Some("root"));
        let no_root = RouteTable::compile(1, &[route("api", "/api", false)]);
        assert!(no_root.find("/other").is_none());
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let table = RouteTable::compile(1, &[route("a", "/svc", true), route("b", "/b/", true)]);
        let svc = table.find("/svc/x/y").unwrap();
        assert_eq!(svc.upstream_path("/svc/x/y"), "/x/y");
        assert_eq!(svc.upstream_path("/svc"), "/");
        let b = table.find("/b/z").unwrap();
        assert_eq!(b.upstream_path("/b/z"), "/z");
    }

    #[test]
    fn routes_with_unknown_plugins_are_skipped() {
        let mut odd = route("odd", "/odd", false);
        odd.plugins.push(Plugin {
            name: "from-the-future".into(),
            config: serde_json::json!({}),
        });
        let table = RouteTable::compile(3, &[odd, route("ok", "/ok", false)]);
        assert_eq!(table.len(), 1);
    }
}
