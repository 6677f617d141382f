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
    pub fetch: FetchConfig,
    pub diff: DiffConfig,
    #[serde(default)]
    pub topics: Vec<TopicConfig>,
    #[serde(default)]
    pub trackers: Vec<TrackerConfig>,
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
    pub ops: OpsConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    pub listen: String,
    pub ready_intervals: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: String,
    pub username: String,
    pub password_file: String,
    pub from: String,
    pub timeout_secs: u64,
    pub initial_backoff_secs: u64,
    pub max_backoff_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub name: String,
    pub recipients: Vec<String>,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub answering_bodies: Vec<String>,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub forces: Vec<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default = "default_answer_events")]
    pub answer_events: Vec<String>,
    #[serde(default)]
    pub flag_kinds: Vec<String>,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default = "default_digest_schedule")]
    pub digest_schedule: String,
    #[serde(default)]
    pub since: String,
}

fn default_answer_events() -> Vec<String> {
    vec![
        "answer_observed".to_string(),
        "answer_corrected".to_string(),
    ]
}

fn default_mode() -> String {
    "immediate".to_string()
}

fn default_digest_schedule() -> String {
    "0 0 8 * * *".to_string()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffConfig {
    pub near_duplicate_ratio: f64,
    pub min_words: u32,
    pub max_candidates: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub name: String,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub answering_bodies: Vec<String>,
    #[serde(default)]
    pub any_police_force: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerConfig {
    pub name: String,
    pub title: String,
    pub subject: Vec<String>,
    pub sentence: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub extra_entities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchConfig {
    pub base_url: String,
    pub schedule: String,
    pub timezone: String,
    pub overlap_days: u32,
    pub first_run_days: u32,
    pub window_days: u32,
    pub page_size: u32,
    pub house: String,
    pub answering_bodies: Vec<u32>,
    pub max_concurrent_requests: u32,
    pub connect_timeout_secs: u64,
    pub read_timeout_secs: u64,
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_secs: u64,
    pub max_retry_after_secs: u64,
    pub user_agent: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub cache_mb: u64,
    /// Free space (MiB) kept on the data dir's filesystem; 0 turns the check off.
    pub min_free_mb: u64,
    /// The daemon closes the log while it waits for a cycle at least this many seconds away;
    /// 0 keeps it open.
    pub close_if_idle_secs: u64,
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
        Config::from_toml(DEFAULT_TOML, "built-in defaults", None, &|_| None)
    }

    /// Reads a user's config file over the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::resolve(Some(path), &|_| None)
    }

    /// The configuration as the binary uses it: the defaults, the file if given, then environment
    /// variables `ANSWERFEED_<SECTION>_<KEY>` (e.g. `ANSWERFEED_FETCH_BASE_URL`) for every key the
    /// defaults have. `env` looks a variable up (`std::env::var` in the binary).
    pub fn resolve(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        match path {
            None => Config::from_toml(DEFAULT_TOML, "built-in defaults", None, env),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::from_toml(&text, &path.display().to_string(), Some(DEFAULT_TOML), env)
            }
        }
    }

    fn from_toml(
        text: &str,
        origin: &str,
        base: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
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
        let overridden = apply_env(&mut value, env)?;
        // A bad value set by an environment variable is the variable's fault, not the file's.
        let blame = |error: ConfigError| blame_variable(error, &overridden);
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(value))
            .map_err(|e: serde_path_to_error::Error<toml::de::Error>| {
                // Spans point into the merged table, not the user's file: the key's path says
                // where instead.
                let path = e.path().to_string();
                let message = e.inner().message().trim().replace('\n', " ");
                ConfigError::Invalid {
                    origin: origin.to_string(),
                    location: String::new(),
                    message: if path.is_empty() || path == "." {
                        message
                    } else {
                        format!("{path}: {message}")
                    },
                }
            })
            .map_err(blame)?;
        config.validate(origin).map_err(blame)?;
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
        if self.store.min_free_mb > 1024 * 1024 {
            return Err(invalid(format!(
                "store.min_free_mb must be at most 1048576 (1 TiB), not {}",
                self.store.min_free_mb
            )));
        }
        let f = &self.fetch;
        crate::fetch::client::parse_base_url(&f.base_url)
            .map_err(|e| invalid(format!("fetch.base_url: {e}")))?;
        // The zone first, under its own key: the schedule's check would report it under
        // `fetch.schedule`, blaming whatever set the schedule.
        crate::schedule::parse_timezone(&f.timezone)
            .map_err(|e| invalid(format!("fetch.timezone: {e}")))?;
        crate::schedule::Schedule::parse(&f.schedule, &f.timezone)
            .map_err(|e| invalid(format!("fetch.schedule: {e}")))?;
        if !matches!(f.house.as_str(), "" | "Commons" | "Lords") {
            return Err(invalid(format!(
                "fetch.house must be \"\", \"Commons\" or \"Lords\", not {:?}",
                f.house
            )));
        }
        let ranges: [(&str, u64, u64, u64); 9] = [
            ("fetch.page_size", u64::from(f.page_size), 1, 1000),
            ("fetch.window_days", u64::from(f.window_days), 1, 3660),
            ("fetch.overlap_days", u64::from(f.overlap_days), 0, 366),
            (
                "fetch.first_run_days",
                u64::from(f.first_run_days),
                0,
                36600,
            ),
            (
                "fetch.max_concurrent_requests",
                u64::from(f.max_concurrent_requests),
                1,
                16,
            ),
            ("fetch.max_attempts", u64::from(f.max_attempts), 1, 100),
            ("fetch.connect_timeout_secs", f.connect_timeout_secs, 1, 600),
            ("fetch.read_timeout_secs", f.read_timeout_secs, 1, 3600),
            ("fetch.max_backoff_secs", f.max_backoff_secs, 0, 86400),
        ];
        for (name, value, min, max) in ranges {
            if value < min || value > max {
                return Err(invalid(format!(
                    "{name} must be between {min} and {max}, not {value}"
                )));
            }
        }
        let ratio = self.diff.near_duplicate_ratio;
        if !(0.5..=1.0).contains(&ratio) {
            return Err(invalid(format!(
                "diff.near_duplicate_ratio must be between 0.5 and 1.0, not {ratio}"
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for tracker in &self.trackers {
            if tracker.name.trim().is_empty() || !names.insert(tracker.name.clone()) {
                return Err(invalid(format!(
                    "tracker names must be present and unique ({:?})",
                    tracker.name
                )));
            }
            if tracker.subject.is_empty() || tracker.sentence.is_empty() {
                return Err(invalid(format!(
                    "tracker {:?} needs at least one subject and one sentence phrase",
                    tracker.name
                )));
            }
        }
        if self.ops.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(format!(
                "ops.listen must be an address such as \"127.0.0.1:8477\", not {:?}",
                self.ops.listen
            )));
        }
        if !matches!(self.smtp.security.as_str(), "plain" | "starttls" | "tls") {
            return Err(invalid(format!(
                "smtp.security must be \"plain\", \"starttls\" or \"tls\", not {:?}",
                self.smtp.security
            )));
        }
        self.smtp
            .from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| invalid(format!("smtp.from {:?}: {e}", self.smtp.from)))?;
        let mut subscription_names = std::collections::BTreeSet::new();
        for sub in &self.subscriptions {
            let name = &sub.name;
            if name.trim().is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                || !subscription_names.insert(name.clone())
            {
                return Err(invalid(format!(
                    "subscription names must be unique and use letters, digits, - and _ ({name:?})"
                )));
            }
            if sub.recipients.is_empty() {
                return Err(invalid(format!("subscription {name:?} has no recipients")));
            }
            for r in &sub.recipients {
                r.parse::<lettre::message::Mailbox>()
                    .map_err(|e| invalid(format!("subscription {name:?}: recipient {r:?}: {e}")))?;
            }
            for topic in &sub.topics {
                if !self.topics.iter().any(|t| &t.name == topic) {
                    return Err(invalid(format!(
                        "subscription {name:?}: no topic named {topic:?} in [[topics]]"
                    )));
                }
            }
            for force in &sub.forces {
                if crate::forces::lookup(force).is_none() {
                    return Err(invalid(format!(
                        "subscription {name:?}: {force:?} is not a police force answerfeed knows"
                    )));
                }
            }
            for kind in &sub.flag_kinds {
                if !crate::event::FLAG_KINDS.contains(&kind.as_str()) {
                    return Err(invalid(format!(
                        "subscription {name:?}: unknown flag kind {kind:?}"
                    )));
                }
            }
            for kind in &sub.answer_events {
                if !crate::event::KINDS.contains(&kind.as_str()) {
                    return Err(invalid(format!(
                        "subscription {name:?}: unknown event kind {kind:?}"
                    )));
                }
            }
            match sub.mode.as_str() {
                "immediate" => {}
                "digest" => {
                    crate::schedule::Schedule::parse(&sub.digest_schedule, &self.fetch.timezone)
                        .map_err(|e| {
                            invalid(format!("subscription {name:?}: digest_schedule: {e}"))
                        })?;
                }
                other => {
                    return Err(invalid(format!(
                        "subscription {name:?}: mode must be \"immediate\" or \"digest\", not {other:?}"
                    )))
                }
            }
            if !sub.since.is_empty() && crate::alert::parse_since(&sub.since).is_none() {
                return Err(invalid(format!(
                    "subscription {name:?}: since {:?} is not a date or RFC 3339 time",
                    sub.since
                )));
            }
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

/// Overrides keys from environment variables, typed like the value they replace. Returns the
/// keys overridden (`section.key`) and the variable that set each.
fn apply_env(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut overridden = Vec::new();
    for (section, value) in table.iter_mut() {
        let toml::Value::Table(inner) = value else {
            // Top-level keys (data_dir) are read by the command line's own env handling.
            continue;
        };
        for (key, current) in inner.iter_mut() {
            let name = format!("ANSWERFEED_{}_{}", section, key).to_uppercase();
            let Some(raw) = env(&name) else { continue };
            overridden.push((format!("{section}.{key}"), name.clone()));
            let invalid = |why: String| ConfigError::Invalid {
                origin: format!("environment variable {name}"),
                location: String::new(),
                message: why,
            };
            *current = match current {
                toml::Value::String(_) => toml::Value::String(raw),
                toml::Value::Integer(_) => toml::Value::Integer(
                    raw.trim()
                        .parse()
                        .map_err(|_| invalid(format!("{raw:?} is not a whole number")))?,
                ),
                toml::Value::Boolean(_) => toml::Value::Boolean(
                    raw.trim()
                        .parse()
                        .map_err(|_| invalid(format!("{raw:?} is not true or false")))?,
                ),
                _ => {
                    let parsed: toml::Table = toml::from_str(&format!("v = {raw}"))
                        .map_err(|e| invalid(e.message().trim().replace('\n', " ")))?;
                    parsed
                        .get("v")
                        .cloned()
                        .ok_or_else(|| invalid("no value".to_string()))?
                }
            };
        }
    }
    Ok(overridden)
}

/// `error` with the environment variable as its origin when its message is about a key that
/// variable set (messages start with the key's path: `fetch.page_size must be ...`).
fn blame_variable(error: ConfigError, overridden: &[(String, String)]) -> ConfigError {
    if let ConfigError::Invalid { message, .. } = &error {
        let names_key = |key: &str| {
            message
                .strip_prefix(key)
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
        };
        if let Some((_, variable)) = overridden.iter().find(|(key, _)| names_key(key)) {
            return ConfigError::Invalid {
                origin: format!("environment variable {variable}"),
                location: String::new(),
                message: message.clone(),
            };
        }
    }
    error
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
    fn environment_variables_override_typed_keys() {
        let env = |name: &str| match name {
            "ANSWERFEED_FETCH_BASE_URL" => Some("http://127.0.0.1:9".to_string()),
            "ANSWERFEED_FETCH_PAGE_SIZE" => Some("25".to_string()),
            "ANSWERFEED_FETCH_ANSWERING_BODIES" => Some("[1, 2]".to_string()),
            _ => None,
        };
        let config = Config::resolve(None, &env).unwrap();
        assert_eq!(config.fetch.base_url, "http://127.0.0.1:9");
        assert_eq!(config.fetch.page_size, 25);
        assert_eq!(config.fetch.answering_bodies, vec![1, 2]);

        let bad = |name: &str| (name == "ANSWERFEED_FETCH_PAGE_SIZE").then(|| "lots".to_string());
        let err = Config::resolve(None, &bad).unwrap_err().to_string();
        assert!(err.contains("ANSWERFEED_FETCH_PAGE_SIZE"), "{err}");
        assert!(err.contains("\"lots\" is not a whole number"), "{err}");
    }

    /// A value of the right type that the checks refuse names the variable that set it, not
    /// the file or the defaults under it; other keys' errors keep their origin.
    #[test]
    fn a_refused_value_from_the_environment_names_its_variable() {
        let zero = |name: &str| (name == "ANSWERFEED_FETCH_PAGE_SIZE").then(|| "0".to_string());
        let err = Config::resolve(None, &zero).unwrap_err().to_string();
        assert_eq!(
            err,
            "config environment variable ANSWERFEED_FETCH_PAGE_SIZE: fetch.page_size must be \
             between 1 and 1000, not 0"
        );
        let url = |name: &str| (name == "ANSWERFEED_FETCH_BASE_URL").then(|| "nowhere".to_string());
        let err = Config::resolve(None, &url).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "config environment variable ANSWERFEED_FETCH_BASE_URL: fetch.base_url:"
            ),
            "{err}"
        );
        // A list of the wrong element type fails in deserializing, under the key's path.
        let bodies = |name: &str| {
            (name == "ANSWERFEED_FETCH_ANSWERING_BODIES").then(|| "[\"x\"]".to_string())
        };
        let err = Config::resolve(None, &bodies).unwrap_err().to_string();
        assert!(
            err.starts_with("config environment variable ANSWERFEED_FETCH_ANSWERING_BODIES:"),
            "{err}"
        );
        // A bad zone is the zone's key's fault, not the schedule's (which is checked with it).
        let zone =
            |name: &str| (name == "ANSWERFEED_FETCH_TIMEZONE").then(|| "Mars/Olympus".to_string());
        let err = Config::resolve(None, &zone).unwrap_err().to_string();
        assert!(
            err.starts_with("config environment variable ANSWERFEED_FETCH_TIMEZONE: fetch.timezone: time zone \"Mars/Olympus\""),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let zone_file = dir.path().join("zone.toml");
        std::fs::write(&zone_file, "[fetch]\ntimezone = \"Mars/Olympus\"\n").unwrap();
        let schedule =
            |name: &str| (name == "ANSWERFEED_FETCH_SCHEDULE").then(|| "0 0 * * * *".to_string());
        let err = Config::resolve(Some(&zone_file), &schedule)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("config {}: fetch.timezone:", zone_file.display())),
            "{err}"
        );
        // The file's own bad value, with a variable setting another key: the file is named.
        let path = dir.path().join("answerfeed.toml");
        std::fs::write(&path, "[fetch]\nwindow_days = 0\n").unwrap();
        let err = Config::resolve(Some(&path), &zero).unwrap_err().to_string();
        assert!(err.contains("fetch.page_size"), "{err}");
        let ok_page = |name: &str| (name == "ANSWERFEED_FETCH_PAGE_SIZE").then(|| "50".to_string());
        let err = Config::resolve(Some(&path), &ok_page)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "config {}: fetch.window_days must be between 1 and 3660, not 0",
                path.display()
            )
        );
    }

    #[test]
    fn defaults_parse() {
        let config = Config::defaults().unwrap();
        assert_eq!(config.data_dir, PathBuf::from("data"));
        assert_eq!(config.store.cache_mb, 16);
        assert_eq!(config.store.min_free_mb, 64);
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

        // A value of the wrong type names its key.
        for (text, key) in [
            (
                "[store]\nclose_if_idle_secs = \"soon\"\n",
                "store.close_if_idle_secs: ",
            ),
            ("[fetch]\npage_size = \"x\"\n", "fetch.page_size: "),
            ("[[subscriptions]]\nname = 3\n", "subscriptions[0].name: "),
        ] {
            std::fs::write(&bad, text).unwrap();
            let err = Config::load(&bad).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
            assert!(err.contains("invalid type"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }

        std::fs::write(&bad, "data_dir = \n").unwrap();
        let err = Config::load(&bad).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        std::fs::write(&bad, "[fetch]\nschedule = \"*/15 * * * *\"\n").unwrap();
        let err = Config::load(&bad).unwrap_err().to_string();
        assert!(err.contains("\"0 */15 * * * *\""), "{err}");

        std::fs::write(&bad, "[fetch]\nbase_url = \"questions.example\"\n").unwrap();
        let err = Config::load(&bad).unwrap_err().to_string();
        assert!(err.contains("fetch.base_url"), "{err}");

        std::fs::write(&bad, "[logging]\nformat = \"xml\"\n").unwrap();
        let err = Config::load(&bad).unwrap_err().to_string();
        assert!(err.contains("xml"), "{err}");
    }
}
