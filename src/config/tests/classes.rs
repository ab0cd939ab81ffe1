//! Class tables and their method tables: one `ClassSpec` per class, one
//! `FunctionSpec` per method, and each rule naming its key.

use super::*;

/// DESIGN.md's class example.
const MODEL: &str = r#"
[apps.demo.classes.model]
backend = "lambda"
command = ["python3", "-m", "awslambdaric", "model.handler"]
parameters = ["size"]
max_parameter_sets = 8
min_instances = 1

[apps.demo.classes.model.functions.predict]
timeout = "30s"
[apps.demo.classes.model.functions.embed]
methods = ["POST", "GET"]
"#;

/// A class of http instances whose methods add `extra` to `predict`.
fn api_class(class_keys: &str, method_keys: &str) -> String {
    format!(
        "[apps.demo.classes.api]\nbackend = \"http\"\ncommand = [\"python3\", \"api.py\"]\n{class_keys}\n\
         [apps.demo.classes.api.functions.predict]\n{method_keys}\n"
    )
}

#[test]
fn a_class_yields_its_spec_and_one_function_per_method() {
    let config = load(MODEL).unwrap();
    assert!(
        config
            .functions
            .iter()
            .all(|f| f.class.as_deref() == Some("model"))
    );
    assert_eq!(config.classes.len(), 1);
    let model = &config.classes[0];
    assert_eq!((model.app.as_str(), model.name.as_str()), ("demo", "model"));
    assert_eq!(model.parameters, vec!["size".to_owned()]);
    assert_eq!(model.max_parameter_sets, 8);
    let BackendSpec::Lambda { pool } = &model.backend else {
        panic!("wrong backend {:?}", model.backend);
    };
    assert_eq!((pool.min_instances, pool.max_instances), (1, 16));
    let mut routes: Vec<String> = config.functions.iter().map(FunctionSpec::route).collect();
    routes.sort();
    assert_eq!(routes, ["/demo/model/embed", "/demo/model/predict"]);
    let predict = config
        .functions
        .iter()
        .find(|f| f.name == "predict")
        .unwrap();
    assert_eq!(predict.timeout, Duration::from_secs(30));
    assert_eq!(predict.methods, Some(vec![Method::POST]));
    assert!(
        matches!(&predict.backend, BackendSpec::Lambda { pool: p } if p.command == pool.command)
    );
    let embed = config.functions.iter().find(|f| f.name == "embed").unwrap();
    assert_eq!(embed.allow_header(), "POST, GET");
}

#[test]
fn class_defaults_and_http_instances() {
    let config = load(&api_class(
        "concurrency = 8\ninstance_concurrency = 4\npath = \"/call\"\n",
        "",
    ))
    .unwrap();
    let api = &config.classes[0];
    assert!(api.parameters.is_empty());
    assert_eq!(api.max_parameter_sets, 8);
    let BackendSpec::HttpInstances { pool, path, .. } = &api.backend else {
        panic!("wrong backend {:?}", api.backend);
    };
    assert_eq!((path.as_str(), pool.max_instances), ("/call", 2));
    let predict = &config.functions[0];
    assert_eq!(
        predict.concurrency, 8,
        "a method's concurrency defaults to the class's"
    );
    assert_eq!(predict.queue, 8);
}

#[test]
fn an_app_may_have_only_classes_but_not_nothing() {
    assert!(load(MODEL).unwrap().functions.len() == 2);
    assert_eq!(rejected_key("[apps.demo]\n"), "apps.demo");
    let both = format!("{SQUARE}{MODEL}");
    assert_eq!(load(&both).unwrap().functions.len(), 3);
}

#[test]
fn bad_class_tables_are_rejected_with_their_key() {
    let cases = [
        ("backend = \"exec\"\ncommand = [\"x\"]\n", "backend"),
        ("backend = \"http\"\n", "command"),
        ("backend = \"ftp\"\n", "backend"),
        ("command = [\"x\"]\n", "backend"),
        (
            "backend = \"http\"\ncommand = [\"x\"]\nurls = [\"http://a/\"]\n",
            "urls",
        ),
        (
            "backend = \"lambda\"\ncommand = [\"x\"]\ninstance_concurrency = 2\n",
            "instance_concurrency",
        ),
        (
            "backend = \"lambda\"\ncommand = [\"x\"]\nconcurrency = 0\n",
            "concurrency",
        ),
        (
            "backend = \"lambda\"\ncommand = [\"x\"]\nmax_parameter_sets = 0\n",
            "max_parameter_sets",
        ),
        (
            "backend = \"lambda\"\ncommand = [\"x\"]\nmin_instances = 20\n",
            "min_instances",
        ),
        (
            "backend = \"lambda\"\ncommand = [\"x\"]\nenv = { FNGATE_PARAM_SIZE = \"x\" }\n",
            "env",
        ),
    ];
    for (keys, key) in cases {
        let text = format!("[apps.demo.classes.c]\n{keys}[apps.demo.classes.c.functions.m]\n");
        assert_eq!(
            rejected_key(&text),
            format!("apps.demo.classes.c.{key}"),
            "{text}"
        );
    }
    let no_methods = "[apps.demo.classes.c]\nbackend = \"lambda\"\ncommand = [\"x\"]\n";
    assert_eq!(rejected_key(no_methods), "apps.demo.classes.c.functions");
}

#[test]
fn parameters_must_be_distinct_identifiers() {
    let cases = [
        ("[\"1size\"]", "parameters[0]"),
        ("[\"size\", \"a-b\"]", "parameters[1]"),
        ("[\"\"]", "parameters[0]"),
        ("[\"size\", \"size\"]", "parameters[1]"),
        ("[\"size\", \"SIZE\"]", "parameters[1]"),
    ];
    for (list, key) in cases {
        let text = api_class(&format!("parameters = {list}\n"), "");
        assert_eq!(
            rejected_key(&text),
            format!("apps.demo.classes.api.{key}"),
            "{list}"
        );
    }
    let good = api_class("parameters = [\"_size\", \"model2\", \"Top_K\"]\n", "");
    assert_eq!(load(&good).unwrap().classes[0].parameters.len(), 3);
}

#[test]
fn method_tables_refuse_backend_keys_as_the_class_s() {
    for line in [
        "backend = \"lambda\"",
        "command = [\"x\"]",
        "urls = [\"http://a/\"]",
        "env = { A = \"1\" }",
        "passthrough = true",
        "http2 = true",
        "path = \"/x\"",
        "ready_path = \"/x\"",
        "instance_concurrency = 1",
        "min_instances = 1",
        "max_instances = 1",
        "idle_timeout = \"1s\"",
        "init_timeout = \"1s\"",
        "exit_grace = \"1s\"",
    ] {
        let name = line.split(' ').next().unwrap();
        let text = api_class("", &format!("{line}\n"));
        assert_eq!(
            rejected_key(&text),
            format!("apps.demo.classes.api.functions.predict.{name}")
        );
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("belongs on the class"), "{err}");
    }
    let unknown = api_class("", "parameters = [\"x\"]\n");
    assert_eq!(
        rejected_key(&unknown),
        "apps.demo.classes.api.functions.predict.parameters"
    );
    let per_call = api_class("", "timeout = \"0s\"\n");
    assert_eq!(
        rejected_key(&per_call),
        "apps.demo.classes.api.functions.predict.timeout"
    );
}

#[test]
fn class_and_method_names_follow_the_name_rules() {
    for (class, method, key) in [
        ("calls", "m", "apps.demo.classes.calls"),
        ("_x", "m", "apps.demo.classes._x"),
        ("Model", "m", "apps.demo.classes.Model"),
        ("c", "_m", "apps.demo.classes.c.functions._m"),
        ("c", "calls", "apps.demo.classes.c.functions.calls"),
    ] {
        let text = format!(
            "[apps.demo.classes.{class}]\nbackend = \"lambda\"\ncommand = [\"x\"]\n\
             [apps.demo.classes.{class}.functions.{method}]\n"
        );
        assert_eq!(rejected_key(&text), key);
    }
    let shared = format!(
        "{SQUARE}[apps.demo.classes.square]\nbackend = \"lambda\"\ncommand = [\"x\"]\n\
         [apps.demo.classes.square.functions.m]\n"
    );
    assert_eq!(rejected_key(&shared), "apps.demo.classes.square");
}

#[test]
fn a_method_schema_may_not_name_a_class_parameter() {
    let key = "apps.demo.classes.api.functions.predict.input_schema";
    for schema in [
        "{ type = \"object\", properties = { size = { type = \"string\" } } }",
        "{ type = \"object\", required = [\"size\"] }",
    ] {
        let text = api_class(
            "parameters = [\"size\"]\n",
            &format!("input_schema = {schema}\n"),
        );
        assert_eq!(rejected_key(&text), key, "{schema}");
    }
    let fine = api_class(
        "parameters = [\"size\"]\n",
        "input_schema = { type = \"object\", properties = { x = { type = \"number\" } } }\n",
    );
    assert!(load(&fine).is_ok());
}

#[test]
fn cors_star_guards_class_methods_too() {
    let auth = format!("[auth]\n[[auth.api_keys]]\nname = \"k\"\nsha256 = \"{KEY_HASH}\"\n");
    let star = format!("{auth}[cors]\nallow_origins = [\"*\"]\n");
    assert_eq!(
        rejected_key(&format!("{star}{}", api_class("", ""))),
        "cors.allow_origins"
    );
    assert!(load(&format!("{star}{}", api_class("", "public = true\n"))).is_ok());
}
