//! `[log]`: how the access log is written (its format and where to).

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Context};

/// `[log]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub access: Option<String>,
}

/// One access-log line per request, in this format, to this sink.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub access: AccessSink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `key=value` pairs after the time.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessSink {
    /// The gateway's stderr, beside its other logs.
    #[default]
    Stderr,
    /// Appended to this file (created when missing).
    File(PathBuf),
    /// No access log.
    Off,
}

impl Context {
    pub(super) fn log(&self, raw: Option<&RawLog>) -> Result<LogConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(LogConfig::default());
        };
        let format = match raw.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(self.invalid(
                    "log.format",
                    format!("'{other}' is not a log format: use \"text\" or \"json\""),
                ));
            }
        };
        let access = match raw.access.as_deref() {
            None | Some("stderr") => AccessSink::Stderr,
            Some("off") => AccessSink::Off,
            Some("") => {
                return Err(self.invalid(
                    "log.access",
                    "give \"stderr\", \"off\" or the path of a file",
                ));
            }
            Some(path) => AccessSink::File(self.resolve(path)),
        };
        Ok(LogConfig { format, access })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const SQUARE: &str =
        "[apps.demo.functions.square]\nbackend = \"exec\"\ncommand = [\"python3\", \"sq.py\"]\n";

    fn load(log: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            Path::new("/etc/fngate/gateway.toml"),
            &format!("{log}\n{SQUARE}"),
        )
    }

    #[test]
    fn without_log_the_access_log_is_text_on_stderr() {
        assert_eq!(load("").unwrap().log, LogConfig::default());
        let config = load("[log]\nformat = \"json\"\naccess = \"logs/access.log\"").unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(
            config.log.access,
            AccessSink::File("/etc/fngate/logs/access.log".into())
        );
        assert_eq!(
            load("[log]\naccess = \"off\"").unwrap().log.access,
            AccessSink::Off
        );
    }

    #[test]
    fn a_bad_format_or_key_is_refused_with_its_key() {
        let message = load("[log]\nformat = \"xml\"").unwrap_err().to_string();
        assert!(message.contains("log.format"), "{message}");
        assert!(message.contains("'xml'"), "{message}");
        let message = load("[log]\nlevel = \"info\"").unwrap_err().to_string();
        assert!(message.contains("log"), "{message}");
        assert!(message.contains("level"), "{message}");
    }
}
