//! Conversion of configuration text into validated types: good configs
//! yield the right values, bad ones name the key that is wrong.

use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(Path::new("/srv/fngate/gateway.toml"), text)
}

/// The key path an invalid config is rejected for.
fn rejected_key(text: &str) -> String {
    match load(text) {
        Err(ConfigError::Invalid { key, .. }) => key,
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("config was accepted:\n{text}"),
    }
}

const SQUARE: &str = r#"
[apps.demo.functions.square]
backend = "exec"
command = ["python3", "examples/square.py"]
"#;

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let config = load(SQUARE).unwrap();
    assert_eq!(
        config.server.listen,
        vec!["127.0.0.1:8443".parse().unwrap()]
    );
    assert_eq!(config.server.max_body, 16 << 20);
    assert_eq!(config.server.sync_wait, Duration::from_secs(150));
    assert_eq!(config.server.max_json_depth, 128);
    assert_eq!(config.store.result_ttl, Duration::from_secs(7 * 86_400));
    assert_eq!(config.store.path, Path::new("/srv/fngate/data/calls.db"));
    assert_eq!(config.store.prefix, "fngate:");
    assert_eq!(config.store.claim_timeout, Duration::from_secs(30));
    assert!(
        matches!(&config.server.tls, TlsSource::Dev { dir } if dir == Path::new("/srv/fngate/certs"))
    );
    let square = &config.functions[0];
    assert_eq!(
        (square.app.as_str(), square.name.as_str()),
        ("demo", "square")
    );
    assert_eq!(square.methods, Some(vec![Method::POST]));
    assert_eq!(square.concurrency, 16);
    assert_eq!(square.queue, 16);
    assert_eq!(square.timeout, DEFAULT_TIMEOUT);
    assert!(!square.public);
    match &square.backend {
        BackendSpec::Exec { cwd, command, .. } => {
            assert_eq!(cwd, Path::new("/srv/fngate"));
            assert_eq!(command[1], "examples/square.py");
        }
        other => panic!("wrong backend {other:?}"),
    }
}

#[test]
fn the_design_example_keys_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("webhook.secret");
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    let secret = secret.display();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:8443"
http_listen = "127.0.0.1:8080"
tls_cert = "certs/gateway.crt"
tls_key = "certs/gateway.key"
max_body = "16MiB"
sync_wait = "150s"
handshake_timeout = "10s"
header_read_timeout = "10s"
idle_timeout = "60s"
max_header_bytes = "16KiB"
max_connections = 10000
h2_max_streams = 128

[store]
kind = "embedded"
path = "data/calls.db"
result_ttl = "7d"
max_pending = 1000000
max_wait = "60s"

[cors]
allow_origins = ["https://app.example.com"]

[webhooks]
secret_file = "{secret}"
allow_hosts = ["hooks.example.com"]
max_attempts = 8

[apps.demo.functions.square]
backend = "exec"
command = ["python3", "examples/square.py"]
methods = ["POST", "GET"]
timeout = "30s"
concurrency = 16
queue = 16
public = true

[apps.demo.functions.echo]
backend = "http"
urls = ["http://127.0.0.1:9001/invoke"]
"#
    );
    let config = load(&text).unwrap();
    let webhooks = config.webhooks.as_ref().unwrap();
    assert_eq!(webhooks.allow_hosts, vec!["hooks.example.com".to_owned()]);
    assert_eq!(webhooks.secret.len(), 24);
    assert!(
        matches!(&config.server.tls, TlsSource::Files { cert, .. } if cert == Path::new("/srv/fngate/certs/gateway.crt"))
    );
    assert_eq!(
        config.server.http_listen,
        Some("127.0.0.1:8080".parse().unwrap())
    );
    assert_eq!(config.functions.len(), 2);
    let square = config
        .functions
        .iter()
        .find(|f| f.name == "square")
        .unwrap();
    assert_eq!(square.allow_header(), "POST, GET");
    assert_eq!(square.timeout, Duration::from_secs(30));
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    assert_eq!(
        rejected_key("[server]\nlisten_on = \"x\"\n"),
        "server.listen_on"
    );
    let text = format!("{SQUARE}timeuot = \"3s\"\n");
    assert_eq!(rejected_key(&text), "apps.demo.functions.square.timeuot");
    assert_eq!(rejected_key("colour = 1\n"), "colour");
}

#[test]
fn bad_values_are_rejected_with_their_key() {
    let cases = [
        (
            format!("{SQUARE}timeout = \"30\"\n"),
            "apps.demo.functions.square.timeout",
        ),
        (
            format!("{SQUARE}timeout = \"0s\"\n"),
            "apps.demo.functions.square.timeout",
        ),
        (
            format!("{SQUARE}concurrency = 0\n"),
            "apps.demo.functions.square.concurrency",
        ),
        (
            format!("{SQUARE}methods = [\"PUT\"]\n"),
            "apps.demo.functions.square.methods",
        ),
        (
            format!("[server]\nmax_body = \"lots\"\n{SQUARE}"),
            "server.max_body",
        ),
        (
            format!("[server]\nlisten = \"localhost\"\n{SQUARE}"),
            "server.listen",
        ),
        (format!("[server]\nlisten = []\n{SQUARE}"), "server.listen"),
        (
            format!("[server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n{SQUARE}"),
            "server.listen",
        ),
        (
            format!("[server]\ntls_cert = \"a.pem\"\n{SQUARE}"),
            "server.tls_key",
        ),
        (format!("[store]\nkind = \"mysql\"\n{SQUARE}"), "store.kind"),
        (
            format!("[store]\nresult_ttl = \"forever\"\n{SQUARE}"),
            "store.result_ttl",
        ),
        (format!("[store]\nkind = \"redis\"\n{SQUARE}"), "store.url"),
        (
            format!("[store]\nprefix = \"a b\"\n{SQUARE}"),
            "store.prefix",
        ),
        (format!("[store]\nprefix = \"\"\n{SQUARE}"), "store.prefix"),
        (
            format!("[store]\nclaim_timeout = \"500ms\"\n{SQUARE}"),
            "store.claim_timeout",
        ),
        (
            format!("{SQUARE}concurrency = \"many\"\n"),
            "apps.demo.functions.square.concurrency",
        ),
    ];
    for (text, key) in cases {
        assert_eq!(rejected_key(&text), key, "for config:\n{text}");
    }
}

#[test]
fn reserved_and_malformed_names_are_rejected() {
    for (app, func, key) in [
        ("calls", "x", "apps.calls"),
        ("_admin", "x", "apps._admin"),
        ("Demo", "x", "apps.Demo"),
        ("demo", "calls", "apps.demo.functions.calls"),
        ("demo", "_x", "apps.demo.functions._x"),
        ("demo", "-x", "apps.demo.functions.-x"),
        ("demo", "sq.uare", "apps.demo.functions.\"sq.uare\""),
    ] {
        let text = format!(
            "[apps.{app}.functions.\"{func}\"]\nbackend = \"exec\"\ncommand = [\"true\"]\n"
        );
        let got = rejected_key(&text);
        assert!(
            got == key || got.replace('"', "") == key.replace('"', ""),
            "{app}/{func}: got {got}"
        );
    }
    let long = "a".repeat(64);
    let text = format!("[apps.demo.functions.{long}]\nbackend = \"exec\"\ncommand = [\"true\"]\n");
    assert_eq!(rejected_key(&text), format!("apps.demo.functions.{long}"));
    assert!(is_valid_name(&"a".repeat(63)));
}

#[test]
fn backends_need_their_command_or_urls() {
    let exec = "[apps.demo.functions.f]\nbackend = \"exec\"\n";
    assert_eq!(rejected_key(exec), "apps.demo.functions.f.command");
    let empty = "[apps.demo.functions.f]\nbackend = \"exec\"\ncommand = []\n";
    assert_eq!(rejected_key(empty), "apps.demo.functions.f.command");
    let http = "[apps.demo.functions.f]\nbackend = \"http\"\n";
    assert_eq!(rejected_key(http), "apps.demo.functions.f.urls");
    let bad_url = "[apps.demo.functions.f]\nbackend = \"http\"\nurls = [\"ftp://x/\"]\n";
    assert_eq!(rejected_key(bad_url), "apps.demo.functions.f.urls[0]");
    let none = "[apps.demo.functions.f]\ncommand = [\"true\"]\n";
    assert_eq!(rejected_key(none), "apps.demo.functions.f.backend");
    let lambda = "[apps.demo.functions.f]\nbackend = \"lambda\"\n";
    assert_eq!(rejected_key(lambda), "apps.demo.functions.f.command");
    let other = "[apps.demo.functions.f]\nbackend = \"ftp\"\n";
    assert_eq!(rejected_key(other), "apps.demo.functions.f.backend");
    let mixed = "[apps.demo.functions.f]\nbackend = \"exec\"\ncommand = [\"true\"]\nurls = [\"http://a/\"]\n";
    assert_eq!(rejected_key(mixed), "apps.demo.functions.f.urls");
}

#[test]
fn inline_input_schema_is_compiled_and_bad_ones_rejected() {
    let good = format!("{SQUARE}input_schema = {{ type = \"object\", required = [\"x\"] }}\n");
    let config = load(&good).unwrap();
    assert_eq!(
        config.functions[0].input_schema.as_ref().unwrap()["required"][0],
        "x"
    );
    let bad = format!("{SQUARE}input_schema = {{ type = \"blob\" }}\n");
    assert_eq!(
        rejected_key(&bad),
        "apps.demo.functions.square.input_schema"
    );
    let missing = format!("{SQUARE}input_schema = \"schemas/nope.json\"\n");
    assert_eq!(
        rejected_key(&missing),
        "apps.demo.functions.square.input_schema"
    );
}

#[test]
fn passthrough_functions_forward_any_method_by_default() {
    let text = "[apps.web.functions.site]\nbackend = \"http\"\nurls = [\"http://127.0.0.1:9001\"]\npassthrough = true\n";
    let config = load(text).unwrap();
    let site = &config.functions[0];
    assert!(site.is_passthrough());
    assert!(site.allows(&Method::PUT));
    assert!(!site.allows(&Method::OPTIONS));
}

#[test]
fn a_missing_client_ca_is_rejected() {
    let text = format!("[server]\nclient_ca = \"ca.pem\"\n{SQUARE}");
    assert_eq!(rejected_key(&text), "server.client_ca");
}

const KEY_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn api_keys_and_rate_limits_are_read() {
    let text = format!(
        "[auth]\nissuer = \"https://issuer.example\"\n[[auth.api_keys]]\nname = \"reports\"\nsha256 = \"{KEY_HASH}\"\n\
         scopes = [\"invoke:demo/*\"]\n[rate_limit]\nrequests_per_second = 50\nburst = 100\n{SQUARE}"
    );
    let config = load(&text).unwrap();
    let auth = config.auth.unwrap();
    assert_eq!(auth.api_keys[0].name, "reports");
    assert_eq!(auth.api_keys[0].sha256[0], 0x9f);
    assert_eq!(auth.leeway, Duration::from_secs(60));
    assert_eq!(config.rate_limit.unwrap().burst, 100);
}

#[test]
fn bad_auth_settings_are_rejected_with_their_key() {
    let key = |sha: &str, scope: &str| {
        format!(
            "[auth]\n[[auth.api_keys]]\nname = \"k\"\nsha256 = \"{sha}\"\nscopes = [\"{scope}\"]\n{SQUARE}"
        )
    };
    assert_eq!(
        rejected_key(&key("abc", "invoke:*")),
        "auth.api_keys[0].sha256"
    );
    assert_eq!(
        rejected_key(&key(KEY_HASH, "read:demo")),
        "auth.api_keys[0].scopes[0]"
    );
    assert_eq!(
        rejected_key(&key(KEY_HASH, "invoke:demo")),
        "auth.api_keys[0].scopes[0]"
    );
    let unset = format!("[auth]\njwt_secret_env = \"FNGATE_TEST_NO_SUCH_VARIABLE\"\n{SQUARE}");
    assert_eq!(rejected_key(&unset), "auth.jwt_secret_env");
    let nothing = format!("[auth]\nissuer = \"x\"\n{SQUARE}");
    assert_eq!(rejected_key(&nothing), "auth");
    let missing = format!("[auth]\njwt_public_key = \"keys/none.pem\"\n{SQUARE}");
    assert_eq!(rejected_key(&missing), "auth.jwt_public_key");
    let zero = format!("[rate_limit]\nrequests_per_second = 0\n{SQUARE}");
    assert_eq!(rejected_key(&zero), "rate_limit.requests_per_second");
}

#[test]
fn cors_origins_are_checked_and_star_is_for_public_functions() {
    let config = load(&format!(
        "[cors]\nallow_origins = [\"https://App.example.com\"]\n{SQUARE}"
    ))
    .unwrap();
    assert_eq!(
        config.cors.default,
        Some(AllowedOrigins::List(vec!["https://app.example.com".into()]))
    );
    let bad = format!("[cors]\nallow_origins = [\"app.example.com\"]\n{SQUARE}");
    assert_eq!(rejected_key(&bad), "cors.allow_origins[0]");
    let path = format!("[cors]\nallow_origins = [\"https://a.example/x\"]\n{SQUARE}");
    assert_eq!(rejected_key(&path), "cors.allow_origins[0]");
    let auth = format!("[auth]\n[[auth.api_keys]]\nname = \"k\"\nsha256 = \"{KEY_HASH}\"\n");
    let star = format!("{auth}[cors]\nallow_origins = [\"*\"]\n{SQUARE}");
    assert_eq!(rejected_key(&star), "cors.allow_origins");
    let public = format!("{auth}[cors]\nallow_origins = [\"*\"]\n{SQUARE}public = true\n");
    assert!(load(&public).is_ok());
    let per_app = format!("{SQUARE}[apps.demo.cors]\nallow_origins = [\"https://b.example\"]\n");
    let config = load(&per_app).unwrap();
    assert_eq!(
        config.cors.apps["demo"],
        AllowedOrigins::List(vec!["https://b.example".into()])
    );
}

#[test]
fn error_message_names_file_and_key() {
    let err = load("[server]\nmax_body = \"lots\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/srv/fngate/gateway.toml: server.max_body: "),
        "{err}"
    );
}

#[test]
fn webhooks_need_a_usable_secret_and_hosts() {
    let unset = format!(
        "[webhooks]\nsecret_env = \"FNGATE_TEST_NO_SUCH_VARIABLE\"\nallow_hosts = [\"h\"]\n{SQUARE}"
    );
    assert_eq!(rejected_key(&unset), "webhooks.secret_env");
    let none = format!("[webhooks]\nallow_hosts = [\"h\"]\n{SQUARE}");
    assert_eq!(rejected_key(&none), "webhooks.secret_env");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.secret");
    std::fs::write(&bad, "not base64!").unwrap();
    let text = format!(
        "[webhooks]\nsecret_file = \"{}\"\nallow_hosts = [\"h\"]\n{SQUARE}",
        bad.display()
    );
    assert_eq!(rejected_key(&text), "webhooks.secret_file");
    let good = dir.path().join("good.secret");
    std::fs::write(&good, "c2VjcmV0").unwrap();
    let text = format!(
        "[webhooks]\nsecret_file = \"{}\"\nallow_hosts = []\n{SQUARE}",
        good.display()
    );
    assert_eq!(rejected_key(&text), "webhooks.allow_hosts");
}

#[test]
fn exec_env_cannot_forge_what_fngate_sets() {
    let text = format!("{SQUARE}env = {{ FNGATE_SUBJECT = \"admin\" }}\n");
    assert_eq!(rejected_key(&text), "apps.demo.functions.square.env");
}

mod classes;
mod instances;
mod policies;

#[test]
fn a_batched_function_defaults_to_a_full_batch_per_instance_at_once() {
    let concurrency = |table: &str| {
        let config = load(&format!("[apps.demo.functions.f]\n{table}")).unwrap();
        (config.functions[0].concurrency, config.functions[0].queue)
    };
    let lambda = "backend = \"lambda\"\ncommand = [\"python3\", \"f.py\"]\n";
    let batch = "batch = { max_size = 32, wait = \"10ms\" }\n";
    // 16 instances (the unbatched default), each with a batch of 32.
    assert_eq!(concurrency(&format!("{lambda}{batch}")), (512, 512));
    assert_eq!(
        concurrency(&format!("{lambda}{batch}max_instances = 2\n")),
        (64, 64)
    );
    let http = "backend = \"http\"\ncommand = [\"python3\", \"api.py\"]\n";
    assert_eq!(
        concurrency(&format!(
            "{http}{batch}max_instances = 2\ninstance_concurrency = 3\n"
        )),
        (192, 192)
    );
    // Never below the unbatched default; a written concurrency wins.
    let small = "batch = { max_size = 2, wait = \"10ms\" }\nmax_instances = 1\n";
    assert_eq!(concurrency(&format!("{lambda}{small}")), (16, 16));
    assert_eq!(
        concurrency(&format!("{lambda}{batch}concurrency = 8\n")),
        (8, 8)
    );
    let urls = "backend = \"http\"\nurls = [\"http://127.0.0.1:9001/invoke\"]\n";
    assert_eq!(concurrency(&format!("{urls}{batch}")), (512, 512));
    assert_eq!(concurrency(urls), (16, 16));
}

#[test]
fn http1_engine_is_fngate_unless_hyper_is_asked_for() {
    assert_eq!(
        load(SQUARE).unwrap().server.http1_engine,
        Http1Engine::Fngate
    );
    let hyper = load(&format!("[server]\nhttp1_engine = \"hyper\"\n{SQUARE}")).unwrap();
    assert_eq!(hyper.server.http1_engine, Http1Engine::Hyper);
    assert_eq!(
        rejected_key(&format!("[server]\nhttp1_engine = \"nginx\"\n{SQUARE}")),
        "server.http1_engine"
    );
}
