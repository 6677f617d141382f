//! Configuration: TOML text in, a validated [`Config`] out.
//!
//! `config/default.toml` is compiled in and is the defaults, so the documented file and the
//! behaviour cannot drift apart. A user's file is read over it field by field; unknown keys are
//! errors, reported on one line with the file and line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The documented defaults, as shipped in `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub logging: LoggingConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub cache_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {origin}{location}: {message}")]
    Invalid {
        origin: String,
        location: String,
        message: String,
    },
}

impl Config {
    /// The built-in defaults.
    pub fn defaults() -> Result<Config, ConfigError> {
        Config::from_toml(DEFAULT_TOML, "built-in defaults", None)
    }

    /// Reads a user's config file over the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string(), Some(DEFAULT_TOML))
    }

    fn from_toml(text: &str, origin: &str, base: Option<&str>) -> Result<Config, ConfigError> {
        let invalid = |text: &str, e: toml::de::Error| ConfigError::Invalid {
            origin: origin.to_string(),
            location: e
                .span()
                .map(|span| format!(" line {}", line_of(text, span.start)))
                .unwrap_or_default(),
            message: e.message().trim().replace('\n', " "),
        };
        let mut value: toml::Table = toml::from_str(text).map_err(|e| invalid(text, e))?;
        if let Some(base) = base {
            let mut merged: toml::Table = toml::from_str(base).map_err(|e| invalid(base, e))?;
            merge(&mut merged, value);
            value = merged;
        }
        let config: Config =
            toml::Value::Table(value)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    // Spans point into the merged table, not the user's file: report the message only.
                    ConfigError::Invalid {
                        origin: origin.to_string(),
                        location: String::new(),
                        message: e.message().trim().replace('\n', " "),
                    }
                })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            location: String::new(),
            message,
        };
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir is empty".to_string()));
        }
        if self.store.cache_mb == 0 || self.store.cache_mb > 64 * 1024 {
            return Err(invalid(format!(
                "store.cache_mb must be between 1 and 65536, not {}",
                self.store.cache_mb
            )));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return Err(invalid(format!(
                "logging.level {:?} is not a level (error, warn, info, debug, trace)",
                self.logging.level
            )));
        }
        Ok(())
    }
}

/// Overlays `over` onto `base`, table by table.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn line_of(text: &str, byte: usize) -> usize {
    text.as_bytes()[..byte.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let config = Config::defaults().unwrap();
        assert_eq!(config.data_dir, PathBuf::from("data"));
        assert_eq!(config.store.cache_mb, 64);
        assert_eq!(config.logging.format, LogFormat::Human);
    }

    #[test]
    fn user_file_overrides_and_unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            "data_dir = \"/srv/answerfeed\"\n[store]\ncache_mb = 16\n",
        )
        .unwrap();
        let config = Config::load(&good).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/answerfeed"));
        assert_eq!(config.store.cache_mb, 16);
        assert_eq!(config.logging.level, "warn");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[store]\ncache_mbb = 16\n").unwrap();
        let err = Config::load(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("cache_mbb"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        std::fs::write(&bad, "data_dir = \n").unwrap();
        let err = Config::load(&bad).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        std::fs::write(&bad, "[logging]\nformat = \"xml\"\n").unwrap();
        let err = Config::load(&bad).unwrap_err().to_string();
        assert!(err.contains("xml"), "{err}");
    }
}
