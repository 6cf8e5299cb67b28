//! The gateway's configuration: routes with plugins, and the declarative form that
//! `/api/export` and `/api/import` exchange as YAML (what `adc dump` is for API7).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::http::UpstreamUrl;
use crate::plugins::PluginSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub id: String,
    /// Requests whose path is this prefix, or continues it after a `/`, match.
    pub path_prefix: String,
    /// `http://host:port` the request is forwarded to.
    pub upstream: String,
    /// Free text; needs schema version 2 (3.4+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub plugins: Vec<Plugin>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    pub name: String,
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// The whole config as `/api/export` writes it: no revision, no timestamps, routes
/// sorted by id, so two exports of the same config are identical bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declarative {
    pub routes: Vec<Route>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("route {id:?}: {reason}")]
    Route { id: String, reason: String },
    #[error("duplicate route {what} {value:?}")]
    Duplicate { what: &'static str, value: String },
    #[error("cannot parse YAML: {0}")]
    Yaml(String),
    #[error("cannot write YAML: {0}")]
    Emit(String),
}

impl Route {
    /// Checks a route as the CP would store it, for a schema at `schema_level`.
    pub fn validate(&self, schema_level: u32) -> Result<(), ModelError> {
        let fail = |reason: String| ModelError::Route {
            id: self.id.clone(),
            reason,
        };
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            return Err(fail("id must be 1-64 characters of [A-Za-z0-9._-]".into()));
        }
        if !self.path_prefix.starts_with('/')
            || self.path_prefix.contains(['?', '#', ' '])
            || self.path_prefix.len() > 1024
        {
            return Err(fail(
                "path_prefix must start with / and hold no query, fragment or space".into(),
            ));
        }
        if self.path_prefix.starts_with("/status") {
            return Err(fail(
                "path_prefix /status is reserved for the DP's own status".into(),
            ));
        }
        UpstreamUrl::parse(&self.upstream).map_err(|e| fail(e.to_string()))?;
        if self.description.is_some() && schema_level < 2 {
            return Err(fail(format!(
                "description needs schema version 2 (3.4+); this database is at {schema_level}"
            )));
        }
        for plugin in &self.plugins {
            PluginSpec::parse(plugin).map_err(|e| fail(e.to_string()))?;
        }
        Ok(())
    }
}

impl Declarative {
    pub fn new(mut routes: Vec<Route>) -> Declarative {
        routes.sort_by(|a, b| a.id.cmp(&b.id));
        Declarative { routes }
    }

    /// Validates every route and that ids and path prefixes are unique.
    pub fn validate(&self, schema_level: u32) -> Result<(), ModelError> {
        let (mut ids, mut prefixes) = (BTreeSet::new(), BTreeSet::new());
        for route in &self.routes {
            route.validate(schema_level)?;
            if !ids.insert(route.id.as_str()) {
                return Err(ModelError::Duplicate {
                    what: "id",
                    value: route.id.clone(),
                });
            }
            if !prefixes.insert(route.path_prefix.as_str()) {
                return Err(ModelError::Duplicate {
                    what: "path_prefix",
                    value: route.path_prefix.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn to_yaml(&self) -> Result<String, ModelError> {
        let sorted = Declarative::new(self.routes.clone());
        serde_saphyr::to_string(&sorted).map_err(|e| ModelError::Emit(e.to_string()))
    }

    pub fn from_yaml(text: &str) -> Result<Declarative, ModelError> {
        let parsed: Declarative =
            serde_saphyr::from_str(text).map_err(|e| ModelError::Yaml(e.to_string()))?;
        Ok(Declarative::new(parsed.routes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(id: &str, prefix: &str) -> Route {
        Route {
            id: id.into(),
            path_prefix: prefix.into(),
            upstream: "http://127.0.0.1:8081".into(),
            description: None,
            plugins: vec![],
        }
    }

    #[test]
    fn yaml_round_trips_awkward_strings_byte_for_byte() {
        let mut b = route("b", "/b");
        b.description = Some("multi\nline: with # hash and 'quotes' and \"dq\"".into());
        b.plugins = vec![Plugin {
            name: "response-header".into(),
            config: json!({"name": "X-Tricky", "value": "true"}),
        }];
        let mut a = route("a", "/");
        a.plugins = vec![
            Plugin {
                name: "strip-prefix".into(),
                config: json!({}),
            },
            Plugin {
                name: "response-header".into(),
                config: json!({"value": "- 1: ~ null ünïcødé", "name": "X-Odd"}),
            },
        ];
        let config = Declarative::new(vec![b, a]);
        assert_eq!(config.routes[0].id, "a", "sorted by id");
        let yaml = config.to_yaml().unwrap();
        let back = Declarative::from_yaml(&yaml).unwrap();
        assert_eq!(back, config, "{yaml}");
        assert_eq!(back.to_yaml().unwrap(), yaml);
    }

    #[test]
    fn empty_config_round_trips() {
        let yaml = Declarative::new(vec![]).to_yaml().unwrap();
        assert_eq!(Declarative::from_yaml(&yaml).unwrap().routes, vec![]);
    }

    #[test]
    fn validation_names_the_route_and_the_problem() {
        let mut bad = route("r1", "/x");
        bad.upstream = "ftp://x:1".into();
        assert!(bad.validate(1).unwrap_err().to_string().contains("r1"));
        let mut described = route("r2", "/y");
        described.description = Some("d".into());
        assert!(described.validate(1).is_err());
        assert!(described.validate(2).is_ok());
        let dup = Declarative::new(vec![route("a", "/x"), route("b", "/x")]);
        assert!(matches!(dup.validate(1), Err(ModelError::Duplicate { .. })));
        assert!(route("s", "/status").validate(1).is_err());
    }

    #[test]
    fn import_rejects_unknown_fields() {
        let yaml =
            "routes:\n  - id: a\n    path_prefix: /a\n    upstream: http://h:1\n    colour: red\n";
        assert!(Declarative::from_yaml(yaml).is_err());
    }
}
