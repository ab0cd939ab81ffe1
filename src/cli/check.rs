//! `fngate check`'s look at a running gateway: with `[admin]`, it asks the
//! admin API for the file the gateway last read and the deploys over it,
//! and says what a reload with this file would change.

use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode, Uri};
use serde_json::Value;

use super::call::client::{GatewayClient, Trust, dev_ca_next_to, read_body};
use crate::config::{Config, OverlayKey, OverlayKind, Overlays};
use crate::reload::{Changes, preview};

/// How long a running gateway gets to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What a reload of the gateway running `config` (reached through its
/// `[admin]` listener) with this file would change; `Err` says why there
/// is nothing to compare with.
pub fn reload_preview(config: &Config) -> Result<Changes, String> {
    let Some(admin) = &config.admin else {
        return Err("no [admin]: the running gateway cannot be asked what it serves".to_owned());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let url = format!("https://localhost:{}/admin/config", admin.listen.port());
    let serving = runtime.block_on(fetch(&config.file, &url, &admin.token))?;
    let (running, overlays) = serving_config(config, &serving)?;
    let here = config
        .with_overlays(&overlays)
        .map_err(|e| format!("with the gateway's deploys over it: {e}"))?;
    Ok(preview(&running, &here))
}

async fn fetch(config: &Path, url: &str, token: &str) -> Result<Value, String> {
    let trust = Trust {
        cacert: None,
        dev_ca: dev_ca_next_to(config),
    };
    let client = GatewayClient::new(&trust, Some(token)).map_err(|e| e.to_string())?;
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let answer = client
        .send(Method::GET, &uri, None, None, Some(ANSWER_WITHIN))
        .await
        .map_err(|e| format!("no running gateway answered at {url}: {e}"))?;
    let status = answer.status();
    let body = read_body(answer.into_body())
        .await
        .map_err(|e| e.to_string())?;
    if status != StatusCode::OK {
        return Err(format!(
            "the gateway at {url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url} answered something not JSON: {e}"))
}

/// The configuration the gateway serves (its file as last read, validated
/// as if it were at `config`'s path) and the deploys over it.
fn serving_config(config: &Config, serving: &Value) -> Result<(Config, Overlays), String> {
    let text = serving["text"]
        .as_str()
        .ok_or("the gateway's answer has no file text")?;
    let mut overlays = Overlays::default();
    for overlay in serving["overlays"].as_array().into_iter().flatten() {
        let kind = match overlay["kind"].as_str() {
            Some("function") => OverlayKind::Function,
            Some("class") => OverlayKind::Class,
            other => return Err(format!("an overlay of an unknown kind: {other:?}")),
        };
        let key = OverlayKey {
            app: overlay["app"].as_str().unwrap_or_default().to_owned(),
            kind,
            name: overlay["name"].as_str().unwrap_or_default().to_owned(),
        };
        let table = Some(overlay["table"].clone()).filter(|t| !t.is_null());
        overlays.0.insert(key, table);
    }
    let file = Config::from_toml(&config.file, text)
        .map_err(|e| format!("the file the gateway serves no longer validates here: {e}"))?;
    let running = file
        .with_overlays(&overlays)
        .map_err(|e| format!("the gateway's deploys: {e}"))?;
    Ok((running, overlays))
}
