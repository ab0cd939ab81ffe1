//! The operations of one deployed function (or class method): its sync
//! call for each method it allows, `/spawn`, `/map` and `/map/spawn`, or,
//! for a passthrough function, the requests it forwards.

use http::Method;
use serde_json::{Map, Value, json};

use super::Settings;
use super::components::{add_errors, call_id_header, location, schema_ref, security};
use crate::registry::{Function, Target};

/// The errors a sync call with a body may answer (`405` never: only the
/// methods the function allows are listed).
const INVOKE_ERRORS: &[u16] = &[
    400, 401, 403, 404, 408, 413, 415, 422, 431, 500, 502, 503, 504, 508,
];
/// The same for `GET`, which reads no body and cannot be spawned.
const GET_ERRORS: &[u16] = &[400, 401, 403, 404, 431, 500, 502, 503, 504, 508];
/// A spawn answers before the call runs: none of the call's own errors.
const SPAWN_ERRORS: &[u16] = &[400, 401, 403, 404, 408, 413, 415, 422, 431, 503, 508];
/// A map answers `200` once its request is read: each input's failure is
/// its line.
const MAP_ERRORS: &[u16] = &[400, 401, 403, 404, 408, 413, 415, 431, 503, 508];
/// A passthrough request: the gateway's own refusals, and the service's
/// answer whatever it is.
const FORWARD_ERRORS: &[u16] = &[400, 401, 403, 404, 408, 413, 431, 502, 503, 504, 508];

/// Methods a passthrough function forwards when its `methods` are not set.
const FORWARDED: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// One function as the document shows it.
struct Described<'a> {
    function: &'a Function,
    settings: &'a Settings,
    /// `/{app}/{function}` or `/{app}/{class}/{method}`.
    route: String,
    /// `app.function` or `app.class.method`: each operation's id starts
    /// with it (no name holds a `.`, so ids never meet).
    id: String,
    /// Its input schema in `components.schemas`, when it declares one.
    input: Option<String>,
}

/// Adds `function`'s operations to `paths`, and its input schema (its
/// local `$ref`s rewritten to where it now lives) to `inputs`.
pub fn add(
    paths: &mut Map<String, Value>,
    inputs: &mut Map<String, Value>,
    function: &Function,
    settings: &Settings,
) {
    let route = function.spec.route();
    let id = route.trim_start_matches('/').replace('/', ".");
    let input = function.spec.input_schema.as_ref().map(|schema| {
        let name = format!("{id}.input");
        inputs.insert(name.clone(), relocated(schema, &name));
        name
    });
    let described = Described {
        function,
        settings,
        route,
        id,
        input,
    };
    match &function.target {
        Target::Passthrough(_) => described.forwards(paths),
        Target::Invoke(_) => described.calls(paths, inputs),
    }
}

impl Described<'_> {
    fn name(&self) -> String {
        self.route.trim_start_matches('/').to_owned()
    }

    /// Every operation's fields but its own: tag, security, parameters.
    fn operation(&self, action: &str, summary: String, description: String) -> Value {
        let spec = &self.function.spec;
        let mut operation = json!({
            "operationId": format!("{}.{action}", self.id),
            "tags": [spec.app],
            "summary": summary,
            "description": description,
        });
        if !spec.public {
            let scope = match &spec.class {
                Some(class) => format!("invoke:{}/{class}", spec.app),
                None => format!("invoke:{}/{}", spec.app, spec.name),
            };
            if let Some(security) = security(self.settings, &scope) {
                operation["security"] = security;
            }
        }
        let parameters = self.class_parameters();
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        operation
    }

    /// A class's parameters, which pick the instance set a call runs on.
    fn class_parameters(&self) -> Vec<Value> {
        let Some(of) = &self.function.class else {
            return Vec::new();
        };
        of.parameters
            .iter()
            .map(|name| {
                json!({
                    "name": name,
                    "in": "query",
                    "required": false,
                    "description": format!("A parameter of class `{}`: each set of values gets instances of its own (missing: empty). Never a keyword argument.", of.class),
                    "schema": {"type": "string"},
                })
            })
            .collect()
    }

    /// The schema of one input: the function's input schema, or any JSON.
    fn input_schema(&self) -> Value {
        schema_ref(self.input.as_deref().unwrap_or("AnyJson"))
    }

    /// What its calls do, said once for every operation.
    fn about(&self) -> String {
        let spec = &self.function.spec;
        let mut about = String::new();
        if let Some(text) = spec
            .input_schema
            .as_ref()
            .and_then(|s| s.get("description").or_else(|| s.get("title")))
            .and_then(Value::as_str)
        {
            about.push_str(text);
            about.push_str("\n\n");
        }
        about.push_str(&format!(
            "Timeout {}.",
            humantime::format_duration(spec.timeout)
        ));
        if spec.stream {
            about.push_str(" Streams its items: NDJSON lines, or Server-Sent Events with `Accept: text/event-stream`.");
        }
        if spec.public {
            about.push_str(" Public: no credentials needed.");
        }
        about
    }

    /// A function called through the `Backend` trait: its sync calls,
    /// spawn, map and spawned map.
    fn calls(&self, paths: &mut Map<String, Value>, inputs: &Map<String, Value>) {
        let spec = &self.function.spec;
        let mut item = Map::new();
        for method in spec.methods.as_deref().unwrap_or(&[Method::POST]) {
            let operation = if *method == Method::GET {
                self.invoke_get(inputs)
            } else {
                self.invoke(method)
            };
            item.insert(method.as_str().to_ascii_lowercase(), operation);
        }
        paths.insert(self.route.clone(), Value::Object(item));
        paths.insert(
            format!("{}/spawn", self.route),
            json!({"post": self.spawn()}),
        );
        paths.insert(format!("{}/map", self.route), json!({"post": self.map()}));
        paths.insert(
            format!("{}/map/spawn", self.route),
            json!({"post": self.map_spawn()}),
        );
    }

    /// The `200` of a sync call: the result, or a streaming function's
    /// items as they come.
    fn result(&self) -> Value {
        let content = if self.function.spec.stream {
            json!({
                "application/x-ndjson": {"schema": {"type": "string", "description": "One JSON item per line, each sent as the function yields it; an error after the first item ends the stream with an `{\"error\": problem}` line."}},
                "text/event-stream": {"schema": {"type": "string", "description": "`data: <item>` per item, then `event: end`, or `event: error` with the problem."}},
            })
        } else {
            json!({"application/json": {"schema": schema_ref("AnyJson")}})
        };
        json!({
            "description": "The function's result.",
            "headers": {"X-Call-Id": call_id_header()},
            "content": content,
        })
    }

    fn redirected() -> Value {
        json!({
            "description": "The call ran past the sync wait (`sync_wait`): it goes on as a spawned call at `Location`, which a client sent there waits on.",
            "headers": {"Location": location("`/calls/{call_id}`.")},
            "content": {"application/json": {"schema": schema_ref("Redirected")}},
        })
    }

    fn accepted(what: &str) -> Value {
        let call = json!({"call_id": "$response.body#/call_id"});
        json!({
            "description": format!("The {what} is stored and will run; `GET /calls/{{call_id}}` answers with its result."),
            "headers": {"Location": location("`/calls/{call_id}`."), "X-Call-Id": call_id_header()},
            "content": {"application/json": {"schema": schema_ref("SpawnAccepted")}},
            "links": {
                "result": {"operationId": "calls.get", "parameters": call, "description": "Its result, or its progress."},
                "cancel": {"operationId": "calls.cancel", "parameters": call, "description": "Cancels it."},
            },
        })
    }

    fn json_body(&self, schema: Value, description: &str) -> Value {
        json!({
            "required": false,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        })
    }

    /// A sync call with a body (`POST`, or another method it allows).
    fn invoke(&self, method: &Method) -> Value {
        let name = self.name();
        // Only a POST is spawned by `Prefer: respond-async`.
        let post = *method == Method::POST;
        let action = match post {
            true => "invoke".to_owned(),
            false => format!("invoke_{}", method.as_str().to_ascii_lowercase()),
        };
        let mut operation = self.operation(
            &action,
            format!("Call {name}"),
            format!(
                "{}\n\nA JSON object is keyword arguments, an array positional arguments, any other value one positional argument; an empty body means none. Query parameters are keyword arguments too.{}",
                self.about(),
                if post {
                    " `Prefer: respond-async` spawns the call instead (`202`)."
                } else {
                    ""
                }
            ),
        );
        if post {
            push_parameter(
                &mut operation,
                json!({
                    "name": "Prefer",
                    "in": "header",
                    "required": false,
                    "description": "`respond-async`: spawn the call and answer `202` at once (RFC 7240).",
                    "schema": {"type": "string", "enum": ["respond-async"]},
                }),
            );
        }
        operation["requestBody"] = self.json_body(self.input_schema(), "The call's arguments.");
        let mut responses = Map::new();
        responses.insert("200".into(), self.result());
        if post {
            let mut accepted = Self::accepted("call");
            accepted["headers"]["Preference-Applied"] = json!({
                "description": "`respond-async`.",
                "required": true,
                "schema": {"type": "string"},
            });
            responses.insert("202".into(), accepted);
        }
        if !self.function.spec.stream {
            responses.insert("303".into(), Self::redirected());
        }
        add_errors(self.settings, INVOKE_ERRORS, &mut responses);
        operation["responses"] = Value::Object(responses);
        operation
    }

    /// A sync call by `GET`: the query is the keyword arguments.
    fn invoke_get(&self, inputs: &Map<String, Value>) -> Value {
        let name = self.name();
        let mut operation = self.operation(
            "invoke_get",
            format!("Call {name} with query parameters"),
            format!(
                "{}\n\nQuery parameters are the keyword arguments: strings, or the type the input schema declares for them.",
                self.about()
            ),
        );
        let schema = self.input.as_ref().and_then(|name| inputs.get(name));
        for parameter in query_arguments(schema, &self.class_parameter_names()) {
            push_parameter(&mut operation, parameter);
        }
        let mut responses = Map::new();
        responses.insert("200".into(), self.result());
        if !self.function.spec.stream {
            responses.insert("303".into(), Self::redirected());
        }
        add_errors(self.settings, GET_ERRORS, &mut responses);
        operation["responses"] = Value::Object(responses);
        operation
    }

    fn class_parameter_names(&self) -> Vec<&str> {
        self.function
            .class
            .as_ref()
            .map(|of| of.parameters.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    fn spawn(&self) -> Value {
        let name = self.name();
        let mut operation = self.operation(
            "spawn",
            format!("Spawn a call of {name}"),
            format!(
                "{}\n\nThe call is stored before the answer, and runs whatever happens to this connection. Its arguments are read as a sync call's are.",
                self.about()
            ),
        );
        self.spawn_headers(&mut operation);
        operation["requestBody"] = self.json_body(self.input_schema(), "The call's arguments.");
        let mut responses = Map::new();
        responses.insert("202".into(), Self::accepted("call"));
        add_errors(self.settings, SPAWN_ERRORS, &mut responses);
        operation["responses"] = Value::Object(responses);
        operation
    }

    fn spawn_headers(&self, operation: &mut Value) {
        push_parameter(
            operation,
            json!({
                "name": "Idempotency-Key",
                "in": "header",
                "required": false,
                "description": "The same key with the same request returns the same call; with another request it is `422`.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
            }),
        );
        if self.settings.webhooks {
            push_parameter(
                operation,
                json!({
                    "name": "Callback-Url",
                    "in": "header",
                    "required": false,
                    "description": "Where to POST `{call_id, status, result | error}` when the call ends, signed per Standard Webhooks; its host must be in `[webhooks] allow_hosts`.",
                    "schema": {"type": "string"},
                }),
            );
        }
    }

    /// The body of a map: its inputs, as an array or as NDJSON lines.
    fn inputs(&self) -> Value {
        json!({
            "required": true,
            "description": "One call's input per element, each read as a call's body is (object: keyword arguments, array: positional ones, any other value: one positional argument).",
            "content": {
                "application/json": {"schema": {"type": "array", "items": self.input_schema()}},
                "application/x-ndjson": {"schema": {"type": "string", "description": "One input per line, read as it streams in."}},
            },
        })
    }

    fn map(&self) -> Value {
        let name = self.name();
        let mut operation = self.operation(
            "map",
            format!("Map {name} over inputs"),
            format!(
                "{}\n\nOne call per input, at the function's concurrency; each input's line is written as it ends, in input order (`?order=completion`: as they end). A client that goes away cancels what has not run.{}",
                self.about(),
                if self.function.spec.stream {
                    " Each input's result is the array of its items."
                } else {
                    ""
                }
            ),
        );
        push_parameter(
            &mut operation,
            json!({
                "name": "order",
                "in": "query",
                "required": false,
                "description": "The order of the lines.",
                "schema": {"type": "string", "enum": ["input", "completion"], "default": "input"},
            }),
        );
        operation["requestBody"] = self.inputs();
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({
                "description": "One line per input, streamed as they end: NDJSON, or, with `Accept: application/json`, one array at the end.",
                "content": {
                    "application/x-ndjson": {"schema": {"type": "string", "description": "A `MapLine` per line."}},
                    "application/json": {"schema": {"type": "array", "items": schema_ref("MapLine")}},
                },
            }),
        );
        add_errors(self.settings, MAP_ERRORS, &mut responses);
        operation["responses"] = Value::Object(responses);
        operation
    }

    fn map_spawn(&self) -> Value {
        let name = self.name();
        let mut operation = self.operation(
            "map_spawn",
            format!("Spawn a map of {name}"),
            format!(
                "{}\n\nEvery input is stored before the answer; `GET /calls/{{call_id}}` reports progress (`202`) until all ended, then answers the NDJSON lines in input order.",
                self.about()
            ),
        );
        self.spawn_headers(&mut operation);
        operation["requestBody"] = self.inputs();
        let mut responses = Map::new();
        responses.insert("202".into(), Self::accepted("map"));
        add_errors(self.settings, SPAWN_ERRORS, &mut responses);
        operation["responses"] = Value::Object(responses);
        operation
    }

    /// A passthrough function: each method it forwards, at its route and
    /// at any path under it.
    fn forwards(&self, paths: &mut Map<String, Value>) {
        let methods = self.function.spec.methods.as_deref().unwrap_or(FORWARDED);
        for (under, suffix) in [(false, ""), (true, "/{path}")] {
            let mut item = Map::new();
            for method in methods {
                item.insert(
                    method.as_str().to_ascii_lowercase(),
                    self.forward(method, under),
                );
            }
            if under {
                item.insert(
                    "parameters".into(),
                    json!([{
                        "name": "path",
                        "in": "path",
                        "required": true,
                        "description": "The rest of the path (it may hold `/`), forwarded as it is.",
                        "schema": {"type": "string"},
                    }]),
                );
            }
            paths.insert(format!("{}{suffix}", self.route), Value::Object(item));
        }
    }

    fn forward(&self, method: &Method, under: bool) -> Value {
        let name = self.name();
        let lower = method.as_str().to_ascii_lowercase();
        let action = match under {
            false => format!("forward_{lower}"),
            true => format!("forward_path_{lower}"),
        };
        let mut operation = self.operation(
            &action,
            format!("{} to {name}", method.as_str()),
            format!(
                "{}\n\nForwarded unchanged (method, path, query, headers but hop-by-hop and `X-Fngate-*`, body), and answered with the service's own status, headers and body. `Prefer: respond-async` spawns it; the stored answer keeps status, content type and body.",
                self.about()
            ),
        );
        if *method != Method::GET && *method != Method::DELETE {
            operation["requestBody"] = json!({
                "required": false,
                "content": {"*/*": {"schema": {}}},
            });
        }
        let mut responses = Map::new();
        responses.insert(
            "default".into(),
            json!({
                "description": "The service's answer, as it gave it.",
                "content": {"*/*": {"schema": {}}},
            }),
        );
        responses.insert("202".into(), Self::accepted("request"));
        add_errors(self.settings, FORWARD_ERRORS, &mut responses);
        operation["responses"] = Value::Object(responses);
        operation
    }
}

fn push_parameter(operation: &mut Value, parameter: Value) {
    match operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    {
        Some(parameters) => parameters.push(parameter),
        None => operation["parameters"] = json!([parameter]),
    }
}

/// The query parameters of a `GET` call: the properties of its input
/// schema (required as it says), or, without them, any keys as strings.
/// A class parameter's name is never a keyword argument: it is skipped.
fn query_arguments(schema: Option<&Value>, class_parameters: &[&str]) -> Vec<Value> {
    let properties = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    let Some(properties) = properties else {
        return vec![json!({
            "name": "kwargs",
            "in": "query",
            "required": false,
            "description": "Any query parameters: each is a keyword argument, as a string.",
            "style": "form",
            "explode": true,
            "schema": {"type": "object", "additionalProperties": {"type": "string"}},
        })];
    };
    let required: Vec<&str> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    properties
        .iter()
        .filter(|(name, _)| !class_parameters.contains(&name.as_str()))
        .map(|(name, property)| {
            let mut parameter = json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "schema": property,
            });
            if let Some(description) = property.get("description") {
                parameter["description"] = description.clone();
            }
            parameter
        })
        .collect()
}

/// An input schema as it lives at `#/components/schemas/{name}`: its local
/// references (`#/$defs/...`, `#/properties/...`) point there, and its
/// top-level `$id` goes, so that they resolve within the document.
fn relocated(schema: &Value, name: &str) -> Value {
    fn rewrite(value: &mut Value, base: &str) {
        match value {
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    match item {
                        Value::String(target) if key == "$ref" && target.starts_with('#') => {
                            *target = format!("{base}{}", &target[1..]);
                        }
                        _ => rewrite(item, base),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| rewrite(item, base)),
            _ => {}
        }
    }
    let mut schema = schema.clone();
    if let Value::Object(map) = &mut schema {
        map.remove("$id");
    }
    rewrite(&mut schema, &format!("#/components/schemas/{name}"));
    schema
}

#[cfg(test)]
mod tests;
