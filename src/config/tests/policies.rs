//! `stream`, `may_call`, `retries` and `batch`, and the server's
//! `max_map_inputs` and `max_call_depth`: defaults, and each rule naming
//! its key.

use super::*;

const SQUARE: &str = r#"
[apps.demo.functions.square]
backend = "exec"
command = ["python3", "examples/square.py"]
"#;

const EMBED: &str = r#"
[apps.demo.functions.embed]
backend = "lambda"
command = ["python3", "-m", "awslambdaric", "embed.handler"]
"#;

#[test]
fn functions_default_to_one_result_no_calls_no_retries_no_batches() {
    let config = load(SQUARE).unwrap();
    let square = &config.functions[0];
    assert!(!square.stream);
    assert!(square.may_call.is_empty());
    assert_eq!(square.retries, None);
    assert_eq!(square.batch, None);
    assert_eq!(config.server.max_map_inputs, 25_000);
    assert_eq!(config.server.max_call_depth, 8);
}

#[test]
fn the_design_example_of_policies_is_accepted() {
    let text = format!(
        "{EMBED}stream = false\nmay_call = [\"demo/square\"]\nretries = 3\n\
         batch = {{ max_size = 32, wait = \"10ms\" }}\n\
         [server]\nmax_map_inputs = 25000\nmax_call_depth = 8\n"
    );
    let config = load(&text).unwrap();
    let embed = &config.functions[0];
    assert_eq!(embed.may_call.len(), 1);
    assert!(embed.may_call[0].allows("demo", "square", None));
    assert_eq!(embed.retries, Some(RetryPolicy::fixed(3)));
    assert_eq!(
        embed.batch,
        Some(BatchSpec {
            max_size: 32,
            wait: Duration::from_millis(10)
        })
    );
}

#[test]
fn the_retry_table_takes_modal_defaults() {
    let text = format!("{SQUARE}retries = {{ max_retries = 2 }}\n");
    let retries = load(&text).unwrap().functions[0].retries.clone().unwrap();
    assert_eq!(retries.max_retries, 2);
    assert_eq!(retries.backoff_coefficient, 2.0);
    assert_eq!(retries.initial_delay, Duration::from_secs(1));
    assert_eq!(retries.max_delay, Duration::from_secs(60));
    let text = format!(
        "{SQUARE}retries = {{ max_retries = 4, backoff_coefficient = 3.0, \
         initial_delay = \"100ms\", max_delay = \"2s\" }}\n"
    );
    let retries = load(&text).unwrap().functions[0].retries.clone().unwrap();
    assert_eq!(retries.delay_after(2), Some(Duration::from_millis(300)));
    assert_eq!(retries.delay_after(4), Some(Duration::from_secs(2)));
}

#[test]
fn each_bad_policy_names_its_key() {
    let cases = [
        (
            format!("{SQUARE}retries = 11\n"),
            "apps.demo.functions.square.retries",
        ),
        (
            format!("{SQUARE}retries = -1\n"),
            "apps.demo.functions.square.retries",
        ),
        (
            format!("{SQUARE}retries = {{ max_retries = 1, backoff_coefficient = 0.5 }}\n"),
            "apps.demo.functions.square.retries.backoff_coefficient",
        ),
        (
            format!("{SQUARE}retries = {{ max_retries = 1, initial_delay = \"2m\" }}\n"),
            "apps.demo.functions.square.retries.initial_delay",
        ),
        (
            format!("{SQUARE}retries = {{ max_retries = 1, max_delay = \"10m\" }}\n"),
            "apps.demo.functions.square.retries.max_delay",
        ),
        (
            format!("{SQUARE}retries = {{ max_retries = 20 }}\n"),
            "apps.demo.functions.square.retries.max_retries",
        ),
        (
            format!("{SQUARE}batch = {{ max_size = 8, wait = \"10ms\" }}\n"),
            "apps.demo.functions.square.batch",
        ),
        (
            format!("{EMBED}batch = {{ max_size = 0, wait = \"10ms\" }}\n"),
            "apps.demo.functions.embed.batch.max_size",
        ),
        (
            format!("{EMBED}batch = {{ max_size = 8, wait = \"0s\" }}\n"),
            "apps.demo.functions.embed.batch.wait",
        ),
        (
            format!("{EMBED}stream = true\nbatch = {{ max_size = 8, wait = \"1ms\" }}\n"),
            "apps.demo.functions.embed.batch",
        ),
        (
            format!("{SQUARE}may_call = [\"demo/square\", \"square\"]\n"),
            "apps.demo.functions.square.may_call[1]",
        ),
        (
            "[server]\nmax_call_depth = 0\n".to_owned(),
            "server.max_call_depth",
        ),
        (
            "[server]\nmax_map_inputs = 0\n".to_owned(),
            "server.max_map_inputs",
        ),
        (
            "[apps.demo.functions.web]\nbackend = \"http\"\nurls = [\"http://127.0.0.1:9/\"]\n\
             passthrough = true\nstream = true\n"
                .to_owned(),
            "apps.demo.functions.web.stream",
        ),
    ];
    for (text, key) in cases {
        assert_eq!(rejected_key(&text), key, "{text}");
    }
}
