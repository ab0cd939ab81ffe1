//! The admin API's routes: what serves now and where it comes from,
//! deploys of a function's or a class's table, deletes, versions and
//! rollbacks. JSON in and out, with the TOML's keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::routing::{MethodRouter, get, post, put};
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::AdminContext;
use super::deploys::{self, Deployed};
use super::problem::AdminError;
use crate::config::{BackendSpec, OverlayKey, OverlayKind};
use crate::store::deploys::{DeployedTable, kind_name};

type Ctx = State<Arc<AdminContext>>;

/// A request body, or why it could not be read.
type SentBody = Result<Bytes, BytesRejection>;

/// `route`, answering other methods `405` with `Allow: allow`.
fn only(
    route: MethodRouter<Arc<AdminContext>>,
    allow: &'static str,
) -> MethodRouter<Arc<AdminContext>> {
    route.fallback(move || async move { AdminError::MethodNotAllowed { allow }.into_response() })
}

/// Every deploy route, for functions and for classes.
pub fn router(ctx: Arc<AdminContext>) -> Router {
    Router::new()
        .route("/admin/functions", only(get(list), "GET, HEAD"))
        .route("/admin/config", only(get(serving_config), "GET, HEAD"))
        .route(
            "/admin/apps/{app}/functions/{name}",
            only(put(put_function).delete(delete_function), "PUT, DELETE"),
        )
        .route(
            "/admin/apps/{app}/classes/{name}",
            only(put(put_class).delete(delete_class), "PUT, DELETE"),
        )
        .route(
            "/admin/apps/{app}/functions/{name}/versions",
            only(get(versions_function), "GET, HEAD"),
        )
        .route(
            "/admin/apps/{app}/classes/{name}/versions",
            only(get(versions_class), "GET, HEAD"),
        )
        .route(
            "/admin/apps/{app}/functions/{name}/rollback",
            only(post(rollback_function), "POST"),
        )
        .route(
            "/admin/apps/{app}/classes/{name}/rollback",
            only(post(rollback_class), "POST"),
        )
        .with_state(ctx)
}

fn key(kind: OverlayKind, (app, name): (String, String)) -> OverlayKey {
    OverlayKey { app, kind, name }
}

/// A JSON answer.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("admin answers always serialise");
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn answer(result: Result<Deployed, AdminError>) -> Response<Body> {
    match result {
        Ok(deployed) if deployed.created => json_response(StatusCode::CREATED, &deployed),
        Ok(deployed) => json_response(StatusCode::OK, &deployed),
        Err(e) => e.into_response(),
    }
}

/// A request body as JSON (`None` when empty).
fn body_json(body: SentBody) -> Result<Option<Value>, AdminError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AdminError::PayloadTooLarge(format!(
            "the body is larger than the admin API takes ({})",
            rejection.body_text()
        )),
        _ => AdminError::InvalidJson(format!(
            "the body cannot be read: {}",
            rejection.body_text()
        )),
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| AdminError::InvalidJson(format!("the body is not JSON: {e}")))
}

async fn put_table(ctx: Arc<AdminContext>, key: OverlayKey, body: SentBody) -> Response<Body> {
    let table = match body_json(body) {
        Ok(Some(table)) => table,
        Ok(None) => {
            return AdminError::InvalidJson(format!(
                "the body must be the table of [{key}] as a JSON object"
            ))
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    answer(deploys::deploy(ctx, key, DeployedTable::Table(table)).await)
}

async fn put_function(
    State(ctx): Ctx,
    Path(at): Path<(String, String)>,
    body: SentBody,
) -> Response<Body> {
    put_table(ctx, key(OverlayKind::Function, at), body).await
}

async fn put_class(
    State(ctx): Ctx,
    Path(at): Path<(String, String)>,
    body: SentBody,
) -> Response<Body> {
    put_table(ctx, key(OverlayKind::Class, at), body).await
}

async fn delete(ctx: Arc<AdminContext>, key: OverlayKey) -> Response<Body> {
    answer(deploys::delete(ctx, key).await)
}

async fn delete_function(State(ctx): Ctx, Path(at): Path<(String, String)>) -> Response<Body> {
    delete(ctx, key(OverlayKind::Function, at)).await
}

async fn delete_class(State(ctx): Ctx, Path(at): Path<(String, String)>) -> Response<Body> {
    delete(ctx, key(OverlayKind::Class, at)).await
}

async fn versions(ctx: &AdminContext, key: OverlayKey) -> Response<Body> {
    let stored = match deploys::versions(ctx, &key).await {
        Ok(stored) => stored,
        Err(e) => return e.into_response(),
    };
    let versions: Vec<Value> = stored
        .into_iter()
        .map(|v| {
            let mut entry = json!({
                "version": v.version,
                "created_ms": v.created_ms,
                "time": rfc3339(v.created_ms),
            });
            match v.table {
                DeployedTable::Table(table) => entry["table"] = table,
                DeployedTable::Deleted => entry["deleted"] = Value::Bool(true),
                DeployedTable::File => entry["file"] = Value::Bool(true),
            }
            entry
        })
        .collect();
    let body = json!({
        "app": key.app,
        "kind": kind_name(key.kind),
        "name": key.name,
        "versions": versions,
    });
    json_response(StatusCode::OK, &body)
}

async fn versions_function(State(ctx): Ctx, Path(at): Path<(String, String)>) -> Response<Body> {
    versions(&ctx, key(OverlayKind::Function, at)).await
}

async fn versions_class(State(ctx): Ctx, Path(at): Path<(String, String)>) -> Response<Body> {
    versions(&ctx, key(OverlayKind::Class, at)).await
}

async fn rollback(ctx: Arc<AdminContext>, key: OverlayKey, body: SentBody) -> Response<Body> {
    let to = match body_json(body) {
        Ok(None) => None,
        Ok(Some(Value::Object(members))) => match members.get("version") {
            None => None,
            Some(version) => match version.as_u64() {
                Some(number) => Some(number),
                None => {
                    return AdminError::InvalidJson(
                        "`version` must be a version number (a positive integer)".to_owned(),
                    )
                    .into_response();
                }
            },
        },
        Ok(Some(_)) => {
            return AdminError::InvalidJson(
                "the body must be empty or {\"version\": N}".to_owned(),
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    answer(deploys::rollback(ctx, key, to).await)
}

async fn rollback_function(
    State(ctx): Ctx,
    Path(at): Path<(String, String)>,
    body: SentBody,
) -> Response<Body> {
    rollback(ctx, key(OverlayKind::Function, at), body).await
}

async fn rollback_class(
    State(ctx): Ctx,
    Path(at): Path<(String, String)>,
    body: SentBody,
) -> Response<Body> {
    rollback(ctx, key(OverlayKind::Class, at), body).await
}

/// `GET /admin/functions`: every function and class method serving now,
/// with its table (a method: its class's, which a PUT of the class takes)
/// and where it comes from.
/// The configuration file as the gateway last read it, and the deploys
/// laid over it: what `fngate check` compares a file with to show what a
/// reload would change.
async fn serving_config(State(ctx): Ctx) -> Response<Body> {
    let file = ctx.reloader.file_config().await;
    let overlays: Vec<Value> = (ctx.reloader.overlays().await.0.into_iter())
        .map(|(key, table)| {
            json!({
                "app": key.app,
                "kind": kind_name(key.kind),
                "name": key.name,
                "table": table,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "file": file.file.display().to_string(),
            "text": &*file.text,
            "overlays": overlays,
        }),
    )
}

async fn list(State(ctx): Ctx) -> Response<Body> {
    let latest = match ctx.state.calls.store().latest_deploys().await {
        Ok(latest) => latest,
        Err(e) => {
            tracing::error!(error = %e, "admin: cannot read the deploys");
            return AdminError::StoreUnavailable.into_response();
        }
    };
    let versions: BTreeMap<OverlayKey, u64> =
        latest.into_iter().map(|v| (v.key, v.version)).collect();
    let overlays = ctx.reloader.overlays().await;
    let file = ctx.reloader.file_config().await;
    let file_tables: toml::Table = file.text.parse().unwrap_or_default();
    let registry = ctx.state.registry.current();
    let functions: Vec<Value> = registry
        .functions()
        .into_iter()
        .map(|f| {
            let class = f.class.as_ref().map(|of| of.class.to_string());
            let key = OverlayKey {
                app: f.app.to_string(),
                kind: match class {
                    Some(_) => OverlayKind::Class,
                    None => OverlayKind::Function,
                },
                name: class.clone().unwrap_or_else(|| f.name.to_string()),
            };
            let (table, source, version) = match overlays.0.get(&key) {
                Some(Some(table)) => (table.clone(), "deploy", versions.get(&key).copied()),
                _ => (file_table(&file_tables, &key), "file", None),
            };
            json!({
                "app": &*f.app,
                "name": &*f.name,
                "class": class,
                "backend": backend_name(&f.spec.backend),
                "target": f.describe(),
                "route": format!("/{}/{}", f.app, f.spec.route_name()),
                "table": table,
                "source": source,
                "version": version,
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "functions": functions }))
}

/// `[apps.APP.functions.NAME]` (or `classes`) of the file, as JSON.
fn file_table(file: &toml::Table, key: &OverlayKey) -> Value {
    let table = file
        .get("apps")
        .and_then(|apps| apps.get(&key.app))
        .and_then(|app| app.get(key.kind.table()))
        .and_then(|tables| tables.get(&key.name));
    table
        .and_then(|table| serde_json::to_value(table).ok())
        .unwrap_or(Value::Null)
}

fn backend_name(backend: &BackendSpec) -> &'static str {
    match backend {
        BackendSpec::Exec { .. } => "exec",
        BackendSpec::Http { .. } | BackendSpec::HttpInstances { .. } => "http",
        BackendSpec::Lambda { .. } => "lambda",
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}
