//! `fngate deploy FILE.toml`: pushes every function's and class's table
//! of a file's `[apps.*]` through a gateway's admin API, one `PUT` each,
//! and prints what each changed.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use serde_json::Value;

use super::call::CallError;
use super::call::client::{GatewayClient, Trust, dev_ca_next_to, read_body};

/// The admin API's address when `--gateway` is not given.
pub const DEFAULT_ADMIN: &str = "https://localhost:9443";

/// `fngate deploy FILE.toml [--gateway URL] [--cacert FILE] [--token-env VAR]`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// A TOML file of [apps.APP.functions.NAME] and [apps.APP.classes.NAME]
    /// tables, written as in gateway.toml.
    #[arg(value_name = "FILE.toml")]
    pub file: PathBuf,
    /// The gateway's admin API ([admin] listen).
    #[arg(long, value_name = "URL", default_value = DEFAULT_ADMIN)]
    pub gateway: String,
    /// Trust only the CA certificates of this PEM file (default: the
    /// system's roots and certs/dev-ca.pem next to --config).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// The environment variable that holds the admin token.
    #[arg(long, value_name = "VAR", default_value = "FNGATE_ADMIN_TOKEN")]
    pub token_env: String,
}

/// `fngate deploy`'s exit statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Every table was deployed.
    Deployed = 0,
    /// The gateway refused a table (4xx): the ones before it are deployed,
    /// the ones after it were not sent.
    Refused = 1,
    /// The command line, the file or the token is unusable.
    Usage = 2,
    /// The gateway failed (5xx).
    GatewayError = 4,
    /// The gateway cannot be reached, or its certificate is not trusted.
    Unreachable = 5,
}

/// One table to push: where it goes, and its JSON.
struct Table {
    /// `apps.demo.functions.cube`
    name: String,
    path: String,
    json: Value,
}

/// Runs `fngate deploy`; the exit status.
pub fn run(args: DeployArgs, config: &Path) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return Exit::Unreachable as u8;
        }
    };
    runtime.block_on(deploy(args, config)) as u8
}

async fn deploy(args: DeployArgs, config: &Path) -> Exit {
    let plan = match plan(&args, config) {
        Ok(plan) => plan,
        Err(why) => {
            eprintln!("error: {why}");
            return Exit::Usage;
        }
    };
    let (client, base, tables) = plan;
    let total = tables.len();
    for (done, table) in tables.into_iter().enumerate() {
        match push(&client, &base, &table).await {
            Ok(line) => println!("{}: {line}", table.name),
            Err(Failure { exit, why }) => {
                eprintln!("error: {}: {why}", table.name);
                if done > 0 {
                    eprintln!(
                        "({done} of {total} tables were deployed before it; the rest were not sent)"
                    );
                }
                return exit;
            }
        }
    }
    Exit::Deployed
}

type Plan = (GatewayClient, String, Vec<Table>);

/// Everything checked before anything is sent.
fn plan(args: &DeployArgs, config: &Path) -> Result<Plan, String> {
    let base = args.gateway.trim_end_matches('/').to_owned();
    if !base.starts_with("https://") || base.parse::<Uri>().is_err() {
        return Err(format!(
            "--gateway {}: give the admin API's https:// URL",
            args.gateway
        ));
    }
    let token = match std::env::var(&args.token_env) {
        Ok(token) if !token.is_empty() => token,
        _ => {
            return Err(format!(
                "set {} to the gateway's admin token (or name another variable with --token-env)",
                args.token_env
            ));
        }
    };
    if http::HeaderValue::from_str(&token).is_err() {
        return Err(format!(
            "{} holds characters a header cannot carry",
            args.token_env
        ));
    }
    let tables = tables(&args.file)?;
    let trust = Trust {
        cacert: args.cacert.clone(),
        dev_ca: dev_ca_next_to(config),
    };
    let client = GatewayClient::new(&trust, Some(&token)).map_err(|e| e.to_string())?;
    Ok((client, base, tables))
}

/// Every function's and class's table of `file`, by app, kind and name.
fn tables(file: &Path) -> Result<Vec<Table>, String> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("{shown}: {e}"))?;
    let document: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{shown}: not TOML: {}", e.message()))?;
    let mut tables = Vec::new();
    for (key, value) in &document {
        if key != "apps" {
            return Err(format!(
                "{shown}: [{key}]: only [apps.*] tables are deployed; the rest of the configuration takes a restart"
            ));
        }
        let apps = value
            .as_table()
            .ok_or_else(|| format!("{shown}: apps must be a table"))?;
        for (app, value) in apps {
            let app_table = value
                .as_table()
                .ok_or_else(|| format!("{shown}: apps.{app} must be a table"))?;
            for (kind, value) in app_table {
                if kind != "functions" && kind != "classes" {
                    return Err(format!(
                        "{shown}: apps.{app}.{kind}: only functions and classes are deployed"
                    ));
                }
                let named = value
                    .as_table()
                    .ok_or_else(|| format!("{shown}: apps.{app}.{kind} must be a table"))?;
                for (name, table) in named {
                    let json = serde_json::to_value(table)
                        .map_err(|e| format!("{shown}: apps.{app}.{kind}.{name}: {e}"))?;
                    tables.push(Table {
                        name: format!("apps.{app}.{kind}.{name}"),
                        path: format!("/admin/apps/{}/{kind}/{}", segment(app), segment(name)),
                        json,
                    });
                }
            }
        }
    }
    if tables.is_empty() {
        return Err(format!(
            "{shown}: no [apps.APP.functions.NAME] or [apps.APP.classes.NAME] table to deploy"
        ));
    }
    Ok(tables)
}

/// A name as one path segment (percent-encoded past the name rules, so
/// the gateway, not the URL, says what is wrong with it).
fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

struct Failure {
    exit: Exit,
    why: String,
}

impl From<CallError> for Failure {
    fn from(error: CallError) -> Failure {
        let exit = match &error {
            CallError::Usage(_) => Exit::Usage,
            _ => Exit::Unreachable,
        };
        Failure {
            exit,
            why: error.to_string(),
        }
    }
}

/// PUTs one table; what the gateway says it changed.
async fn push(client: &GatewayClient, base: &str, table: &Table) -> Result<String, Failure> {
    let uri: Uri = format!("{base}{}", table.path)
        .parse()
        .map_err(|e| Failure {
            exit: Exit::Usage,
            why: format!("{base}{}: {e}", table.path),
        })?;
    let body = Bytes::from(table.json.to_string());
    let answer = client
        .send(
            Method::PUT,
            &uri,
            Some(("application/json", body)),
            Some("application/json"),
            None,
        )
        .await?;
    let status = answer.status();
    let bytes = read_body(answer.into_body()).await?;
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(describe(status, &json));
    }
    let exit = if status.is_client_error() {
        Exit::Refused
    } else {
        Exit::GatewayError
    };
    let detail = json["detail"].as_str().map_or_else(
        || String::from_utf8_lossy(&bytes).into_owned(),
        str::to_owned,
    );
    let code = json["code"].as_str().unwrap_or("?");
    Err(Failure {
        exit,
        why: format!("{} {code}: {detail}", status.as_u16()),
    })
}

/// `version 2: changed demo/cube`, from a deploy's answer.
fn describe(status: StatusCode, answer: &Value) -> String {
    let version = answer["version"].as_u64().unwrap_or(0);
    let mut parts = Vec::new();
    for what in ["added", "changed", "removed"] {
        let routes: Vec<&str> = answer["changes"][what]
            .as_array()
            .map(|routes| routes.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !routes.is_empty() {
            parts.push(format!("{what} {}", routes.join(", ")));
        }
    }
    let what = if parts.is_empty() {
        "unchanged".to_owned()
    } else {
        parts.join("; ")
    };
    let created = if status == StatusCode::CREATED {
        " (new)"
    } else {
        ""
    };
    format!("version {version}{created}: {what}")
}
