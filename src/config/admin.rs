//! `[admin]`: the admin listener (deploys, their versions, the console)
//! and the Bearer token every admin route asks for.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{ConfigError, Context};

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_env: Option<String>,
}

/// Where the admin API listens, and the token it asks for.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// A loopback address: the admin API never faces the network.
    pub listen: SocketAddr,
    /// The value of the `token_env` variable at start-up.
    pub token: String,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &"(hidden)")
            .finish()
    }
}

/// `[admin] listen` when absent.
const DEFAULT_LISTEN: &str = "127.0.0.1:9443";

impl Context {
    pub(super) fn admin(&self, raw: Option<&RawAdmin>) -> Result<Option<AdminConfig>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = text.parse().map_err(|_| {
            self.invalid(
                "admin.listen",
                format!("'{text}' is not an address: write IP:PORT, e.g. \"127.0.0.1:9443\""),
            )
        })?;
        if !listen.ip().is_loopback() {
            return Err(self.invalid(
                "admin.listen",
                format!(
                    "{listen} is not a loopback address: the admin API deploys code, so it listens on 127.0.0.1 or ::1 only (reach it from elsewhere through an SSH tunnel)"
                ),
            ));
        }
        let Some(name) = raw.token_env.as_deref() else {
            return Err(self.invalid(
                "admin.token_env",
                "is required: the name of the environment variable that holds the admin API's Bearer token",
            ));
        };
        let token = match std::env::var(name) {
            Ok(token) if !token.is_empty() => token,
            Ok(_) => {
                return Err(
                    self.invalid("admin.token_env", format!("the variable {name} is empty"))
                );
            }
            Err(_) => {
                return Err(
                    self.invalid("admin.token_env", format!("the variable {name} is not set"))
                );
            }
        };
        Ok(Some(AdminConfig { listen, token }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn rejected_key(text: &str) -> (String, String) {
        match Config::from_toml(Path::new("/srv/gateway.toml"), text) {
            Err(ConfigError::Invalid { key, message, .. }) => (key, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn without_admin_there_is_no_admin_listener() {
        let config = Config::from_toml(Path::new("/srv/gateway.toml"), "").unwrap();
        assert!(config.admin.is_none());
    }

    #[test]
    fn admin_listens_on_loopback_with_the_token_of_its_variable() {
        // PATH is set in every test environment and never empty.
        let config = Config::from_toml(
            Path::new("/srv/gateway.toml"),
            "[admin]\ntoken_env = \"PATH\"\n",
        )
        .unwrap();
        let admin = config.admin.expect("[admin] is set");
        assert_eq!(admin.listen, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(admin.token, std::env::var("PATH").unwrap());
        assert!(!format!("{admin:?}").contains(&admin.token));
    }

    #[test]
    fn admin_refuses_what_it_cannot_use_naming_the_key() {
        let (key, message) = rejected_key("[admin]\nlisten = \"127.0.0.1:9443\"\n");
        assert_eq!(key, "admin.token_env");
        assert!(message.contains("required"), "{message}");
        let (key, message) =
            rejected_key("[admin]\ntoken_env = \"FNGATE_TEST_NO_SUCH_VARIABLE\"\n");
        assert_eq!(key, "admin.token_env");
        assert!(
            message.contains("FNGATE_TEST_NO_SUCH_VARIABLE"),
            "{message}"
        );
        let (key, message) =
            rejected_key("[admin]\nlisten = \"0.0.0.0:9443\"\ntoken_env = \"PATH\"\n");
        assert_eq!(key, "admin.listen");
        assert!(message.contains("loopback"), "{message}");
        let (key, _) = rejected_key("[admin]\nlisten = \"here\"\ntoken_env = \"PATH\"\n");
        assert_eq!(key, "admin.listen");
        let (key, _) = rejected_key("[admin]\ntoken_env = \"PATH\"\ncolour = 1\n");
        assert!(key.starts_with("admin"), "{key}");
    }
}
