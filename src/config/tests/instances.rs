//! Warm instance backends (`lambda`, `http` with `command`) and their pool
//! keys: defaults, and each rule naming its key.

use super::*;

const EMBED: &str = r#"
[apps.demo.functions.embed]
backend = "lambda"
command = ["python3", "-m", "awslambdaric", "embed.handler"]
"#;

const API: &str = r#"
[apps.demo.functions.api]
backend = "http"
command = ["python3", "examples/api.py"]
"#;

fn pool_of(spec: &FunctionSpec) -> &PoolSpec {
    match &spec.backend {
        BackendSpec::Lambda { pool } | BackendSpec::HttpInstances { pool, .. } => pool,
        other => panic!("not an instance backend: {other:?}"),
    }
}

#[test]
fn lambda_functions_get_the_documented_pool_defaults() {
    let config = load(&format!("{EMBED}env = {{ MODEL = \"small\" }}\n")).unwrap();
    let embed = &config.functions[0];
    assert!(matches!(embed.backend, BackendSpec::Lambda { .. }));
    assert_eq!(embed.class, None);
    assert_eq!(embed.route(), "/demo/embed");
    let pool = pool_of(embed);
    assert_eq!(pool.command[2], "awslambdaric");
    assert_eq!(pool.cwd, Path::new("/srv/fngate"));
    assert_eq!(pool.env["MODEL"], "small");
    assert_eq!((pool.min_instances, pool.max_instances), (0, 16));
    assert_eq!(pool.instance_concurrency, 1);
    assert_eq!(pool.idle_timeout, Duration::from_secs(60));
    assert_eq!(pool.init_timeout, Duration::from_secs(60));
    assert_eq!(pool.exit_grace, Duration::from_secs(10));
}

#[test]
fn the_design_example_of_warm_functions_is_accepted() {
    let text = format!(
        "{EMBED}min_instances = 1\nmax_instances = 4\nidle_timeout = \"60s\"\n\
         init_timeout = \"60s\"\nexit_grace = \"10s\"\n\
         {API}path = \"/invoke\"\nready_path = \"/healthz\"\ninstance_concurrency = 8\n"
    );
    let config = load(&text).unwrap();
    let embed = config.functions.iter().find(|f| f.name == "embed").unwrap();
    assert_eq!(
        (pool_of(embed).min_instances, pool_of(embed).max_instances),
        (1, 4)
    );
    let api = config.functions.iter().find(|f| f.name == "api").unwrap();
    match &api.backend {
        BackendSpec::HttpInstances {
            pool,
            path,
            ready_path,
            passthrough,
            http2,
        } => {
            assert_eq!(path, "/invoke");
            assert_eq!(ready_path.as_deref(), Some("/healthz"));
            assert!(!passthrough && !http2);
            assert_eq!(pool.instance_concurrency, 8);
            assert_eq!(pool.max_instances, 2, "concurrency 16 / 8 calls each");
        }
        other => panic!("wrong backend {other:?}"),
    }
}

#[test]
fn http_instances_default_to_the_root_path_and_may_pass_through() {
    let config = load(&format!("{API}passthrough = true\nhttp2 = true\n")).unwrap();
    let api = &config.functions[0];
    assert!(api.is_passthrough());
    assert_eq!(api.methods, None, "a passthrough forwards any method");
    let BackendSpec::HttpInstances {
        path, ready_path, ..
    } = &api.backend
    else {
        panic!("wrong backend {:?}", api.backend);
    };
    assert_eq!((path.as_str(), ready_path.as_deref()), ("/", None));
    assert_eq!(pool_of(api).instance_concurrency, 1);
    let query = load(&format!("{API}path = \"/v1/run?mode=fast\"\n")).unwrap();
    assert!(matches!(
        &query.functions[0].backend,
        BackendSpec::HttpInstances { path, .. } if path == "/v1/run?mode=fast"
    ));
}

#[test]
fn max_instances_defaults_to_enough_instances_for_the_concurrency() {
    let max =
        |extra: &str| pool_of(&load(&format!("{API}{extra}")).unwrap().functions[0]).max_instances;
    assert_eq!(max("concurrency = 4\n"), 4);
    assert_eq!(max("concurrency = 10\ninstance_concurrency = 4\n"), 3);
    assert_eq!(max("concurrency = 2\ninstance_concurrency = 8\n"), 1);
    assert_eq!(max("concurrency = 2\nmax_instances = 5\n"), 5);
}

#[test]
fn lambda_refuses_what_only_http_takes() {
    for name in ["urls", "passthrough", "http2", "path", "ready_path"] {
        let value = match name {
            "urls" => "[\"http://127.0.0.1:9001/\"]",
            "passthrough" | "http2" => "true",
            _ => "\"/x\"",
        };
        let text = format!("{EMBED}{name} = {value}\n");
        assert_eq!(
            rejected_key(&text),
            format!("apps.demo.functions.embed.{name}")
        );
    }
    let text = format!("{EMBED}instance_concurrency = 2\n");
    assert_eq!(
        rejected_key(&text),
        "apps.demo.functions.embed.instance_concurrency"
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(err.contains("one call at a time"), "{err}");
    assert!(load(&format!("{EMBED}instance_concurrency = 1\n")).is_ok());
    let empty = "[apps.demo.functions.embed]\nbackend = \"lambda\"\ncommand = [\"\"]\n";
    assert_eq!(rejected_key(empty), "apps.demo.functions.embed.command");
}

#[test]
fn http_instances_check_their_paths_and_urls() {
    let cases = [
        ("urls = [\"http://127.0.0.1:9001/\"]\n", "urls"),
        ("path = \"invoke\"\n", "path"),
        ("path = \"/a b\"\n", "path"),
        ("path = \"/a#top\"\n", "path"),
        ("ready_path = \"healthz\"\n", "ready_path"),
        ("instance_concurrency = 0\n", "instance_concurrency"),
    ];
    for (extra, key) in cases {
        let text = format!("{API}{extra}");
        assert_eq!(
            rejected_key(&text),
            format!("apps.demo.functions.api.{key}"),
            "{extra}"
        );
    }
    let empty = "[apps.demo.functions.api]\nbackend = \"http\"\ncommand = []\n";
    assert_eq!(rejected_key(empty), "apps.demo.functions.api.command");
}

#[test]
fn pool_limits_are_checked_with_their_key() {
    let cases = [
        ("min_instances = 3\nmax_instances = 2\n", "min_instances"),
        ("concurrency = 2\nmin_instances = 3\n", "min_instances"),
        ("max_instances = 0\n", "max_instances"),
        ("init_timeout = \"0s\"\n", "init_timeout"),
        ("idle_timeout = \"soon\"\n", "idle_timeout"),
        ("exit_grace = \"10\"\n", "exit_grace"),
        ("min_instances = -1\n", "min_instances"),
    ];
    for base in [EMBED, API] {
        let name = if base == EMBED { "embed" } else { "api" };
        for (extra, key) in cases {
            let text = format!("{base}{extra}");
            assert_eq!(
                rejected_key(&text),
                format!("apps.demo.functions.{name}.{key}"),
                "{text}"
            );
        }
    }
    assert!(
        load(&format!(
            "{EMBED}idle_timeout = \"0s\"\nexit_grace = \"0s\"\n"
        ))
        .is_ok()
    );
}

#[test]
fn instance_env_cannot_set_what_fngate_sets() {
    for base in [EMBED, API] {
        let name = if base == EMBED { "embed" } else { "api" };
        for var in ["FNGATE_PARAM_SIZE", "AWS_LAMBDA_RUNTIME_API", "PORT"] {
            let text = format!("{base}env = {{ {var} = \"x\" }}\n");
            assert_eq!(
                rejected_key(&text),
                format!("apps.demo.functions.{name}.env")
            );
            let err = load(&text).unwrap_err().to_string();
            assert!(err.contains(var), "{err}");
        }
        let text = format!("{base}env = {{ \"A=B\" = \"x\" }}\n");
        assert_eq!(
            rejected_key(&text),
            format!("apps.demo.functions.{name}.env")
        );
    }
    // Exec keeps its rule: PORT is the function's own business there.
    assert!(load(&format!("{SQUARE}env = {{ PORT = \"1\" }}\n")).is_ok());
}

#[test]
fn keys_of_warm_instances_are_refused_elsewhere() {
    let exec_keys = [
        "min_instances = 1",
        "max_instances = 1",
        "idle_timeout = \"1s\"",
        "init_timeout = \"1s\"",
        "exit_grace = \"1s\"",
        "instance_concurrency = 1",
        "path = \"/\"",
        "ready_path = \"/\"",
    ];
    let urls =
        "[apps.demo.functions.echo]\nbackend = \"http\"\nurls = [\"http://127.0.0.1:9001/\"]\n";
    for line in exec_keys {
        let name = line.split(' ').next().unwrap();
        let exec = format!("{SQUARE}{line}\n");
        assert_eq!(
            rejected_key(&exec),
            format!("apps.demo.functions.square.{name}")
        );
        let http = format!("{urls}{line}\n");
        assert_eq!(
            rejected_key(&http),
            format!("apps.demo.functions.echo.{name}")
        );
        let err = load(&http).unwrap_err().to_string();
        assert!(err.contains("command"), "{err}");
    }
    let env = format!("{urls}env = {{ A = \"1\" }}\n");
    assert_eq!(rejected_key(&env), "apps.demo.functions.echo.env");
}

#[test]
fn unknown_backends_are_told_the_three_there_are() {
    let text = "[apps.demo.functions.f]\nbackend = \"lamda\"\ncommand = [\"x\"]\n";
    let err = load(text).unwrap_err().to_string();
    assert!(
        err.contains("\"exec\"") && err.contains("\"http\"") && err.contains("\"lambda\""),
        "{err}"
    );
}
