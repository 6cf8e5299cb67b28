//! The plugins a route can carry. The CP validates them on write; the DP compiles
//! them once per config revision and applies them per request.

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::model::Plugin;

#[derive(Debug, Clone, PartialEq)]
pub enum PluginSpec {
    /// Adds (or replaces) a header on every response of the route.
    ResponseHeader {
        name: HeaderName,
        value: HeaderValue,
    },
    /// Removes the route's `path_prefix` from the path before forwarding.
    StripPrefix,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("unknown plugin {0:?} (known: response-header, strip-prefix)")]
    Unknown(String),
    #[error("plugin {name}: invalid config: {reason}")]
    Config { name: &'static str, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseHeaderConfig {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StripPrefixConfig {}

impl PluginSpec {
    pub fn parse(plugin: &Plugin) -> Result<PluginSpec, PluginError> {
        match plugin.name.as_str() {
            "response-header" => {
                let name = "response-header";
                let fail = |reason: String| PluginError::Config { name, reason };
                let config: ResponseHeaderConfig = serde_json::from_value(plugin.config.clone())
                    .map_err(|e| fail(e.to_string()))?;
                Ok(PluginSpec::ResponseHeader {
                    name: HeaderName::try_from(config.name).map_err(|e| fail(e.to_string()))?,
                    value: HeaderValue::try_from(config.value).map_err(|e| fail(e.to_string()))?,
                })
            }
            "strip-prefix" => {
                let _: StripPrefixConfig =
                    serde_json::from_value(plugin.config.clone()).map_err(|e| {
                        PluginError::Config {
                            name: "strip-prefix",
                            reason: e.to_string(),
                        }
                    })?;
                Ok(PluginSpec::StripPrefix)
            }
            other => Err(PluginError::Unknown(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin(name: &str, config: serde_json::Value) -> Plugin {
        Plugin {
            name: name.into(),
            config,
        }
    }

    #[test]
    fn parses_known_plugins_and_rejects_bad_config() {
        assert_eq!(
            PluginSpec::parse(&plugin("strip-prefix", json!({}))).unwrap(),
            PluginSpec::StripPrefix
        );
        assert!(matches!(
            PluginSpec::parse(&plugin(
                "response-header",
                json!({"name": "X-A", "value": "1"})
            )),
            Ok(PluginSpec::ResponseHeader { .. })
        ));
        assert!(
            PluginSpec::parse(&plugin(
                "response-header",
                json!({"name": "bad name", "value": "1"})
            ))
            .is_err()
        );
        assert!(PluginSpec::parse(&plugin("response-header", json!({"name": "X-A"}))).is_err());
        assert!(PluginSpec::parse(&plugin("rate-limit", json!({}))).is_err());
    }
}
