//! The OpenAPI 3.1 document of what a gateway serves now: every deployed
//! function's and class method's routes (sync call, spawn, map, spawned
//! map, or a passthrough function's forwarded requests), the spawned
//! calls' routes, the gateway's own, the problem details every error
//! carries and, with `[auth]`, the security schemes. Built from a
//! [`Registry`] and the [`Settings`] around it, so it follows deploys and
//! reloads; input schemas (JSON Schema 2020-12) go in as they are.

mod components;
mod functions;

use serde_json::{Map, Value, json};

use crate::registry::{Registry, Target};
use components::{
    add_errors, call_id_header, location, optional_security, retry_after, schema_ref,
};

/// What besides the registry shapes the document.
pub struct Settings {
    /// The gateway's URL as the client addressed it (`servers`), so the
    /// document works as served.
    pub server_url: String,
    /// The credentials `[auth]` accepts; `None` without `[auth]`.
    pub auth: Option<AuthSchemes>,
    /// `[rate_limit]` is set: any call may be `429`.
    pub rate_limited: bool,
    /// `[webhooks]` is set: spawns take `Callback-Url`.
    pub webhooks: bool,
}

/// Which bearer credentials `[auth]` accepts.
pub struct AuthSchemes {
    pub jwt: bool,
    pub api_keys: bool,
}

/// The document, as JSON.
pub fn document(registry: &Registry, settings: &Settings) -> Value {
    let mut paths = Map::new();
    let mut inputs = Map::new();
    let mut apps: Vec<&str> = Vec::new();
    let mut forwards = false;
    for function in registry.functions() {
        functions::add(&mut paths, &mut inputs, function, settings);
        if !apps.contains(&&*function.app) {
            apps.push(&function.app);
        }
        forwards |= matches!(function.target, Target::Passthrough(_));
    }
    calls(&mut paths, settings, forwards);
    gateway(&mut paths);
    let mut tags: Vec<Value> = apps
        .iter()
        .map(|app| json!({"name": app, "description": format!("The functions of app `{app}`.")}))
        .collect();
    tags.push(
        json!({"name": "calls", "description": "Spawned calls: results, long polls, cancels."}),
    );
    tags.push(json!({"name": "gateway", "description": "The gateway's own routes."}));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fngate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The functions this gateway serves now, at their stable URLs. Errors are RFC 9457 problem details (`application/problem+json`) with a stable `code` and the request's id.",
        },
        "servers": [{"url": settings.server_url}],
        "tags": tags,
        "paths": paths,
        "components": components::components(settings, inputs),
    })
}

/// `GET` and `DELETE /calls/{call_id}`. `forwards`: a passthrough function
/// is deployed, whose stored answers keep the service's status and
/// content type.
fn calls(paths: &mut Map<String, Value>, settings: &Settings, forwards: bool) {
    let errors = |statuses: &[u16]| {
        let mut responses = Map::new();
        add_errors(settings, statuses, &mut responses);
        responses
    };
    let mut result_content = json!({
        "application/json": {"schema": schema_ref("AnyJson")},
        "application/x-ndjson": {"schema": {"type": "string", "description": "A spawned map's `MapLine`s in input order, or a streaming function's items, one per line."}},
    });
    let mut get_responses = errors(&[400, 401, 404, 410, 500, 502, 503, 504]);
    if forwards {
        result_content["*/*"] = json!({"schema": {}});
        get_responses.insert(
            "default".into(),
            json!({"description": "A passthrough function's stored answer, with the service's status.", "content": {"*/*": {"schema": {}}}}),
        );
    }
    get_responses.insert(
        "200".into(),
        json!({
            "description": "The call ended: its result.",
            "headers": {
                "X-Call-Id": call_id_header(),
                "X-Attempt": {"description": "The run it ended on (1 first).", "required": false, "schema": {"type": "integer"}},
            },
            "content": result_content,
        }),
    );
    get_responses.insert(
        "202".into(),
        json!({
            "description": "The call is pending or running (a spawned map: its progress).",
            "headers": {"Retry-After": retry_after(), "X-Call-Id": call_id_header()},
            "content": {"application/json": {"schema": {"oneOf": [schema_ref("CallProgress"), schema_ref("MapProgress")]}}},
        }),
    );
    get_responses.insert(
        "303".into(),
        json!({
            "description": "A sync call's client sent here waited as long as the call did, and the call still runs: ask again.",
            "headers": {"Location": location("This same `/calls/{call_id}`.")},
            "content": {"application/json": {"schema": schema_ref("Redirected")}},
        }),
    );
    let mut get = json!({
        "operationId": "calls.get",
        "tags": ["calls"],
        "summary": "Result of a spawned call",
        "description": "The result once the call ended (the error a sync call would have answered, if it failed), else `202` with its progress. `?wait=SECONDS` long-polls: the answer comes when the call ends or the wait (capped by `max_wait`) passes.",
        "parameters": [{
            "name": "wait",
            "in": "query",
            "required": false,
            "description": "Seconds to wait for the call to end.",
            "schema": {"type": "number", "minimum": 0},
        }],
        "responses": get_responses,
    });
    let mut cancel_responses = errors(&[401, 404, 409, 503]);
    cancel_responses.insert(
        "200".into(),
        json!({
            "description": "The call is cancelled (or already was): what had not ended stops.",
            "content": {"application/json": {"schema": schema_ref("Cancelled")}},
        }),
    );
    let mut cancel = json!({
        "operationId": "calls.cancel",
        "tags": ["calls"],
        "summary": "Cancel a spawned call",
        "responses": cancel_responses,
    });
    if let Some(security) = optional_security(settings) {
        get["security"] = security.clone();
        cancel["security"] = security;
    }
    paths.insert(
        "/calls/{call_id}".into(),
        json!({
            "parameters": [{
                "name": "call_id",
                "in": "path",
                "required": true,
                "description": "`fc-` and at least 128 random bits. A call of a function that needs credentials is found by its owner only.",
                "schema": {"type": "string"},
            }],
            "get": get,
            "delete": cancel,
        }),
    );
}

/// `/_/health`, `/_/ready`, `/_/metrics`, and this document and its page.
/// They take no credentials.
fn gateway(paths: &mut Map<String, Value>) {
    let status = |values: &[&str]| {
        json!({
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": values}, "detail": {"type": "string"}},
        })
    };
    let json_answer = |description: &str, schema: Value| json!({"description": description, "content": {"application/json": {"schema": schema}}});
    paths.insert(
        "/_/health".into(),
        json!({"get": {
            "operationId": "gateway.health",
            "tags": ["gateway"],
            "summary": "Liveness: the process answers",
            "responses": {"200": json_answer("It answers.", status(&["ok"]))},
        }}),
    );
    paths.insert(
        "/_/ready".into(),
        json!({"get": {
            "operationId": "gateway.ready",
            "tags": ["gateway"],
            "summary": "Readiness: it should get traffic",
            "responses": {
                "200": json_answer("Its store works and it is not draining.", status(&["ready"])),
                "503": json_answer("It drains, or its call store failed (`detail` says how).", status(&["draining", "store_failed"])),
            },
        }}),
    );
    paths.insert(
        "/_/metrics".into(),
        json!({"get": {
            "operationId": "gateway.metrics",
            "tags": ["gateway"],
            "summary": "Metrics in the Prometheus text format",
            "responses": {"200": {
                "description": "Every `fngate_` series (the README lists them).",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }},
        }}),
    );
    paths.insert(
        "/_/openapi.json".into(),
        json!({"get": {
            "operationId": "gateway.openapi",
            "tags": ["gateway"],
            "summary": "This document",
            "responses": {"200": json_answer("OpenAPI 3.1 of what is deployed now.", json!({"type": "object"}))},
        }}),
    );
    paths.insert(
        "/_/docs".into(),
        json!({"get": {
            "operationId": "gateway.docs",
            "tags": ["gateway"],
            "summary": "A page that renders this document",
            "responses": {"200": {
                "description": "A self-contained page: no outside assets.",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }},
        }}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::http::HttpClients;
    use crate::config::Config;

    const APPS: &str = r#"
        [apps.demo.functions.square]
        backend = "exec"
        command = ["true"]
        methods = ["POST", "GET"]
        public = true

        [apps.demo.functions.greet]
        backend = "exec"
        command = ["true"]
        methods = ["GET"]
        input_schema = { type = "object", properties = { name = { type = "string" } }, required = ["name"] }

        [apps.demo.functions.count]
        backend = "exec"
        command = ["true"]
        stream = true

        [apps.web.functions.site]
        backend = "http"
        urls = ["http://127.0.0.1:9/"]
        passthrough = true

        [apps.demo.classes.model]
        backend = "lambda"
        command = ["true"]
        parameters = ["size"]

        [apps.demo.classes.model.functions.predict]
    "#;

    fn document_of(text: &str, auth: Option<AuthSchemes>) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml(&dir.path().join("gateway.toml"), text).unwrap();
        let registry = Registry::from_config(&config, &HttpClients::new());
        let settings = Settings {
            server_url: "https://gw.example:8443".into(),
            auth,
            rate_limited: false,
            webhooks: false,
        };
        document(&registry, &settings)
    }

    fn operation_ids(document: &Value) -> Vec<String> {
        let mut ids = Vec::new();
        for item in document["paths"].as_object().unwrap().values() {
            for (key, operation) in item.as_object().unwrap() {
                if key != "parameters" {
                    ids.push(operation["operationId"].as_str().unwrap().to_owned());
                }
            }
        }
        ids
    }

    #[test]
    fn every_function_has_its_routes_with_stable_unique_ids() {
        let document = document_of(APPS, None);
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(document["servers"][0]["url"], "https://gw.example:8443");
        let ids = operation_ids(&document);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        for id in [
            "demo.square.invoke",
            "demo.square.invoke_get",
            "demo.square.spawn",
            "demo.square.map",
            "demo.square.map_spawn",
            "demo.greet.invoke_get",
            "demo.model.predict.invoke",
            "demo.model.predict.spawn",
            "web.site.forward_get",
            "web.site.forward_path_delete",
            "calls.get",
            "calls.cancel",
            "gateway.health",
            "gateway.ready",
            "gateway.metrics",
        ] {
            assert!(ids.iter().any(|i| i == id), "{id} in {ids:?}");
        }
        let paths = &document["paths"];
        assert!(paths["/demo/greet"].get("post").is_none());
        assert!(paths["/web/site/spawn"].is_null());
        assert!(paths["/web/site/{path}"]["get"].is_object());
    }

    #[test]
    fn input_schemas_are_bodies_and_get_query_parameters() {
        let document = document_of(APPS, None);
        let schema = &document["components"]["schemas"]["demo.greet.input"];
        assert_eq!(schema["required"], json!(["name"]));
        let get = &document["paths"]["/demo/greet"]["get"];
        assert_eq!(get["parameters"][0]["name"], "name");
        assert_eq!(get["parameters"][0]["required"], true);
        let spawn = &document["paths"]["/demo/greet/spawn"]["post"];
        assert_eq!(
            spawn["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/demo.greet.input"
        );
        let square = &document["paths"]["/demo/square"]["post"];
        assert_eq!(
            square["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/AnyJson"
        );
        let predict = &document["paths"]["/demo/model/predict/map"]["post"];
        let names: Vec<&str> = predict["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["size", "order"]);
    }

    #[test]
    fn streaming_functions_answer_ndjson_or_events() {
        let document = document_of(APPS, None);
        let content = &document["paths"]["/demo/count"]["post"]["responses"]["200"]["content"];
        assert!(content["application/x-ndjson"].is_object());
        assert!(content["text/event-stream"].is_object());
        assert!(content.get("application/json").is_none());
        let plain = &document["paths"]["/demo/square"]["post"]["responses"];
        assert!(plain["200"]["content"]["application/json"].is_object());
        assert_eq!(plain["404"]["$ref"], "#/components/responses/NotFound");
    }

    #[test]
    fn security_is_on_non_public_functions_only_and_only_with_auth() {
        let open = document_of(APPS, None);
        assert!(open["components"].get("securitySchemes").is_none());
        assert!(
            open["paths"]["/demo/greet"]["get"]
                .get("security")
                .is_none()
        );
        let auth = AuthSchemes {
            jwt: true,
            api_keys: true,
        };
        let closed = document_of(APPS, Some(auth));
        let schemes = &closed["components"]["securitySchemes"];
        assert_eq!(schemes["jwt"]["bearerFormat"], "JWT");
        assert_eq!(schemes["apiKey"]["scheme"], "bearer");
        assert_eq!(
            closed["paths"]["/demo/greet"]["get"]["security"],
            json!([{"jwt": ["invoke:demo/greet"]}, {"apiKey": ["invoke:demo/greet"]}])
        );
        assert_eq!(
            closed["paths"]["/demo/model/predict"]["post"]["security"][0],
            json!({"jwt": ["invoke:demo/model"]})
        );
        assert!(
            closed["paths"]["/demo/square"]["post"]
                .get("security")
                .is_none()
        );
        assert!(
            closed["paths"]["/_/health"]["get"]
                .get("security")
                .is_none()
        );
        assert_eq!(
            closed["paths"]["/calls/{call_id}"]["get"]["security"][0],
            json!({})
        );
    }
}
