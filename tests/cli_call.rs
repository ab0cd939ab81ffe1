//! `fngate call` end to end: the real binary calls a real gateway over TLS
//! (trusting its dev CA through `--cacert`, or by itself from a folder
//! holding a config with `certs/dev-ca.pem` next to it) and prints results
//! on stdout, problems on stderr, with the exit status saying which.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{BIN, Gateway, closed_port, exec_fn, repo_file};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The HS256 secret of the `[auth]` gateway, and its variable.
const SECRET_ENV: &str = "FNGATE_TEST_CLI_SECRET";
const SECRET: &str = "fngate-cli-test-secret-0123456789-abcdefghij";

/// What a run of `fngate call` did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `fngate call ARGS` in `cwd` with `envs` (and no FNGATE_TOKEN
/// unless given), writing `stdin` to it.
async fn fngate_call(args: &[&str], cwd: &Path, envs: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.arg("call")
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("FNGATE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn fngate call");
    let mut input = child.stdin.take().expect("stdin piped");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("fngate call {args:?} did not exit within 60 s"))
        .expect("run fngate call");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The demo functions of the quick start (square, echo, slow, fail), as
/// scripts in the config's folder, plus `server` lines.
async fn demo_gateway(server: &str) -> Gateway {
    Gateway::builder()
        .server(server)
        .file("square.py", repo_file("examples/square.py"))
        .file("echo.py", repo_file("examples/echo.py"))
        .file("slow.py", repo_file("examples/slow.py"))
        .file("fail.py", repo_file("examples/fail.py"))
        .toml(&exec_fn("demo", "square", "square.py", ""))
        .toml(&exec_fn("demo", "echo", "echo.py", ""))
        .toml(&exec_fn("demo", "slow", "slow.py", "timeout = \"60s\""))
        .toml(&exec_fn("demo", "fail", "fail.py", ""))
        .start()
        .await
}

/// `fngate call FUNCTION ARGS --gateway GW --cacert CA`, run in a folder
/// of its own (no config there).
async fn call(gw: &Gateway, args: &[&str]) -> Run {
    call_with(gw, args, &[], "").await
}

async fn call_with(gw: &Gateway, args: &[&str], envs: &[(&str, &str)], stdin: &str) -> Run {
    let url = gw.url("");
    let ca = gw.ca_path();
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--gateway",
        &url,
        "--cacert",
        ca.to_str().expect("utf-8 path"),
    ]);
    let cwd = tempfile::tempdir().expect("temp dir");
    fngate_call(&all, cwd.path(), envs, stdin).await
}

fn assert_exit(run: &Run, code: i32) {
    assert_eq!(run.code, Some(code), "exit status of {run:#?}");
}

#[tokio::test]
async fn a_sync_call_prints_the_result_and_exits_0() {
    let gw = demo_gateway("").await;
    let run = call(&gw, &["demo/square", "x=7"]).await;
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "49\n");
    assert_eq!(run.stderr, "");
}

#[tokio::test]
async fn key_value_pairs_are_json_when_they_parse_and_strings_otherwise() {
    let gw = demo_gateway("").await;
    let run = call(
        &gw,
        &[
            "demo/echo",
            "x=42",
            "flag=true",
            "tags=[1,2]",
            "name=alice",
            "big=123456789012345678901234567890",
            "ratio=1e400",
            "quoted=\"42\"",
        ],
    )
    .await;
    assert_exit(&run, 0);
    // Compact (stdout is not a terminal), numbers exactly as typed.
    assert_eq!(
        run.stdout,
        "{\"args\":[],\"kwargs\":{\"x\":42,\"flag\":true,\"tags\":[1,2],\"name\":\"alice\",\
         \"big\":123456789012345678901234567890,\"ratio\":1e400,\"quoted\":\"42\"}}\n"
    );
}

#[tokio::test]
async fn json_gives_the_body_verbatim_from_the_argument_or_stdin() {
    let gw = demo_gateway("").await;
    let run = call(&gw, &["demo/echo", "--json", "[1, {\"a\": \"b\"}]"]).await;
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "{\"args\":[1,{\"a\":\"b\"}],\"kwargs\":{}}\n");

    let run = call_with(&gw, &["demo/square", "--json", "-"], &[], "{\"x\": 12}\n").await;
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "144\n");

    // The gateway judges the body: not JSON is its 400.
    let run = call(&gw, &["demo/square", "--json", "{\"x\": "]).await;
    assert_exit(&run, 3);
    assert!(
        run.stderr.starts_with("error: 400 invalid_json: "),
        "{run:#?}"
    );
}

#[tokio::test]
async fn mixing_pairs_and_json_or_a_bad_target_is_a_usage_error() {
    let gw = demo_gateway("").await;
    let run = call(&gw, &["demo/square", "x=1", "--json", "{}"]).await;
    assert_exit(&run, 2);
    assert!(run.stderr.contains("--json"), "{run:#?}");
    for (args, says) in [
        (&["demo"][..], "is not APP/FUNCTION or APP/CLASS/METHOD"),
        (&["demo/Square"], "'demo/Square'"),
        (&["demo/square", "x"], "'x' is not key=value"),
        (&["demo/square", "x=1", "x=2"], "the key 'x' is given twice"),
        (&["demo/square", "--wait", "3"], "--spawn"),
    ] {
        let run = call(&gw, args).await;
        assert_exit(&run, 2);
        assert!(run.stderr.contains(says), "{args:?}: {run:#?}");
        assert_eq!(run.stdout, "", "{args:?}");
    }
}

#[tokio::test]
async fn spawn_prints_the_call_id_at_once() {
    let gw = demo_gateway("").await;
    let run = call(&gw, &["demo/slow", "seconds=0.2", "--spawn"]).await;
    assert_exit(&run, 0);
    let spawned: Value = serde_json::from_str(run.stdout.trim()).expect("JSON on stdout");
    let id = spawned["call_id"].as_str().expect("call_id");
    assert!(id.starts_with("fc-"), "{spawned}");
    assert_eq!(spawned["status"], "pending", "{spawned}");
    // It is a real call: the gateway has its result.
    let result = gw
        .client()
        .get(gw.url(&format!("/calls/{id}?wait=20")))
        .send()
        .await
        .expect("GET the call");
    assert_eq!(common::json_ok(result).await["slept"], 0.2);
}

#[tokio::test]
async fn spawn_with_wait_prints_the_result_or_exits_6_while_it_runs() {
    let gw = demo_gateway("").await;
    let run = call(&gw, &["demo/slow", "seconds=1", "--spawn", "--wait", "30"]).await;
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "{\"slept\":1}\n");

    let run = call(
        &gw,
        &["demo/slow", "seconds=30", "--spawn", "--wait", "0.5"],
    )
    .await;
    assert_exit(&run, 6);
    let progress: Value = serde_json::from_str(run.stdout.trim()).expect("progress JSON");
    let id = progress["call_id"].as_str().expect("call_id");
    assert!(
        matches!(progress["status"].as_str(), Some("pending" | "running")),
        "{progress}"
    );
    assert!(
        run.stderr
            .starts_with(&format!("error: the call {id} is still ")),
        "{run:#?}"
    );
    assert!(run.stderr.contains(&format!("/calls/{id}")), "{run:#?}");

    // A failed spawned call is the function's failure.
    let run = call(&gw, &["demo/fail", "--spawn", "--wait", "30"]).await;
    assert_exit(&run, 1);
    assert!(
        run.stderr
            .starts_with("error: 500 function_error: the function failed with ValueError"),
        "{run:#?}"
    );
}

#[tokio::test]
async fn a_sync_call_past_sync_wait_follows_its_303_to_the_result() {
    let gw = demo_gateway("sync_wait = \"1s\"").await;
    let run = call(&gw, &["demo/slow", "seconds=2.5"]).await;
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "{\"slept\":2.5}\n");
}

#[tokio::test]
async fn map_prints_a_line_per_input_and_a_failed_input_exits_1() {
    let gw = demo_gateway("").await;
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs.ndjson");
    std::fs::write(&inputs, "{\"x\": 1}\n{\"x\": \"one\"}\n3\n").unwrap();
    let run = call(&gw, &["demo/square", "--map", inputs.to_str().unwrap()]).await;
    assert_exit(&run, 1);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{run:#?}");
    assert_eq!(lines[0], serde_json::json!({"index": 0, "result": 1}));
    assert_eq!(lines[1]["index"], 1);
    assert_eq!(lines[1]["error"]["code"], "function_error");
    assert_eq!(lines[2], serde_json::json!({"index": 2, "result": 9}));
    assert!(
        run.stderr
            .starts_with("error: input 1: 500 function_error: the function failed with ValueError"),
        "{run:#?}"
    );

    // A JSON array from stdin, every input succeeding.
    let run = call_with(
        &gw,
        &["demo/square", "--map", "-"],
        &[],
        "[2, [3], {\"x\": 4}]",
    )
    .await;
    assert_exit(&run, 0);
    assert_eq!(
        run.stdout,
        "{\"index\":0,\"result\":4}\n{\"index\":1,\"result\":9}\n{\"index\":2,\"result\":16}\n"
    );

    // As one spawned map, waited for.
    let run = call_with(
        &gw,
        &["demo/square", "--map", "-", "--spawn", "--wait", "30"],
        &[],
        "5\n6\n",
    )
    .await;
    assert_exit(&run, 0);
    assert_eq!(
        run.stdout,
        "{\"index\":0,\"result\":25}\n{\"index\":1,\"result\":36}\n"
    );
}

#[tokio::test]
async fn an_unknown_function_is_a_readable_404_with_exit_3() {
    let gw = demo_gateway("").await;
    let run = call(&gw, &["demo/nope", "x=1"]).await;
    assert_exit(&run, 3);
    assert_eq!(
        run.stderr,
        "error: 404 function_not_found: no function 'nope' in app 'demo'\n"
    );
    assert_eq!(run.stdout, "");
    let run = call(&gw, &["nope/square"]).await;
    assert_exit(&run, 3);
    assert_eq!(run.stderr, "error: 404 app_not_found: no app 'nope'\n");
}

#[tokio::test]
async fn a_function_error_exits_1_with_its_message() {
    let gw = demo_gateway("").await;
    let run = call(&gw, &["demo/fail"]).await;
    assert_exit(&run, 1);
    let mut lines = run.stderr.lines();
    assert_eq!(
        lines.next(),
        Some("error: 500 function_error: the function failed with ValueError")
    );
    assert!(
        run.stderr
            .contains("\n  ValueError: this function always fails\n"),
        "the function's own message, indented: {run:#?}"
    );
    assert!(
        run.stderr
            .lines()
            .last()
            .unwrap()
            .starts_with("  (request id "),
        "{run:#?}"
    );
    assert_eq!(run.stdout, "");
}

#[tokio::test]
async fn the_token_comes_from_fngate_token() {
    let gw = Gateway::builder()
        .env(SECRET_ENV, SECRET)
        .file("square.py", repo_file("examples/square.py"))
        .toml(&format!("[auth]\njwt_secret_env = \"{SECRET_ENV}\"\n"))
        .toml(&exec_fn("demo", "square", "square.py", ""))
        .start()
        .await;
    let run = call(&gw, &["demo/square", "x=3"]).await;
    assert_exit(&run, 3);
    assert!(
        run.stderr.starts_with("error: 401 unauthorized: "),
        "{run:#?}"
    );

    let config = gw.dir.join("gateway.toml");
    let (code, token, stderr) = common::run_bin_env(
        &[
            "token",
            "--sub",
            "alice",
            "--scope",
            "invoke:demo/*",
            "--config",
            config.to_str().unwrap(),
        ],
        &gw.dir,
        &[(SECRET_ENV, SECRET)],
    )
    .await;
    assert_eq!(code, Some(0), "fngate token: {stderr}");
    let run = call_with(
        &gw,
        &["demo/square", "x=3"],
        &[("FNGATE_TOKEN", token.trim())],
        "",
    )
    .await;
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "9\n");

    let run = call_with(
        &gw,
        &["demo/square", "x=3"],
        &[("FNGATE_TOKEN", "not-a-token")],
        "",
    )
    .await;
    assert_exit(&run, 3);
    assert!(
        run.stderr.starts_with("error: 401 unauthorized"),
        "{run:#?}"
    );
}

#[tokio::test]
async fn an_unreachable_or_untrusted_gateway_exits_5() {
    let cwd = tempfile::tempdir().unwrap();
    let closed = format!("https://127.0.0.1:{}", closed_port());
    let run = fngate_call(
        &["demo/square", "x=1", "--gateway", &closed],
        cwd.path(),
        &[],
        "",
    )
    .await;
    assert_exit(&run, 5);
    assert!(
        run.stderr.starts_with("error: cannot reach the gateway: "),
        "{run:#?}"
    );

    // A live gateway whose dev CA this folder does not have.
    let gw = demo_gateway("").await;
    let url = gw.url("");
    let run = fngate_call(
        &["demo/square", "x=1", "--gateway", &url],
        cwd.path(),
        &[],
        "",
    )
    .await;
    assert_exit(&run, 5);
    assert!(
        run.stderr
            .starts_with("error: the gateway's certificate is not trusted: "),
        "{run:#?}"
    );
    assert_eq!(run.stdout, "");
}

/// A copy of the quick start (gateway.toml and examples/), served on a
/// free port: `fngate call` run in its folder trusts the dev CA the
/// gateway generated there, with neither --cacert nor --config.
#[tokio::test]
async fn from_the_quick_start_folder_the_dev_ca_is_trusted_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_quick_start(dir.path());
    let config = std::fs::read_to_string(dir.path().join("gateway.toml")).unwrap();
    let gw = Gateway::builder()
        .in_dir(dir.path())
        .raw_config(&common::quick_start_on_port_0(&config))
        .start()
        .await;
    assert!(dir.path().join("certs/dev-ca.pem").is_file());
    let url = gw.url("");
    let run = fngate_call(
        &["demo/square", "x=42", "--gateway", &url],
        dir.path(),
        &[],
        "",
    )
    .await;
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "1764\n");

    // A class method: APP/CLASS/METHOD, its parameter in the query.
    let run = fngate_call(
        &["demo/counter/incr?name=ada", "by=2", "--gateway", &url],
        dir.path(),
        &[],
        "",
    )
    .await;
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "{\"name\":\"ada\",\"count\":2}\n");
    // A method that takes only GET is called with GET, its pairs as the
    // query.
    let run = fngate_call(
        &["demo/counter/get", "name=ada", "--gateway", &url],
        dir.path(),
        &[],
        "",
    )
    .await;
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "{\"name\":\"ada\",\"count\":2}\n");

    // From elsewhere, --config names the folder whose dev CA to trust.
    let elsewhere = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let run = fngate_call(
        &[
            "demo/square",
            "x=5",
            "--gateway",
            &url,
            "--config",
            config.to_str().unwrap(),
        ],
        elsewhere.path(),
        &[],
        "",
    )
    .await;
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "25\n");
}

/// The sh block of the README's "Calling from a terminal", as (command,
/// the `# ` lines under it).
fn readme_terminal_block() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(common::repo_dir().join("README.md")).expect("README.md");
    let section = readme
        .split_once("\n## Calling from a terminal\n")
        .expect("README has `## Calling from a terminal`")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("an sh block in the section")
        .0;
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        match line.strip_prefix('#') {
            Some(expected) => steps
                .last_mut()
                .expect("a command before its output")
                .1
                .push(expected.strip_prefix(' ').unwrap_or(expected).to_owned()),
            None => steps.push((line.to_owned(), Vec::new())),
        }
    }
    steps
}

/// Whether `text` matches `pattern`, where `...` stands for any text.
fn glob(pattern: &str, text: &str) -> bool {
    let pieces: Vec<&str> = pattern.split("...").collect();
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if pieces.len() == 1 {
        return pattern == text;
    }
    if !text.starts_with(first) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Every line of the README's terminal block, run as written (`fngate`
/// is the binary under test, pointed at the quick start's port instead of
/// 8443) in a copy of the quick start, prints what the README says
/// (stdout and stderr together).
#[tokio::test]
async fn the_readme_terminal_examples_print_what_the_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_quick_start(dir.path());
    let config = std::fs::read_to_string(dir.path().join("gateway.toml")).unwrap();
    let gw = Gateway::builder()
        .in_dir(dir.path())
        .raw_config(&common::quick_start_on_port_0(&config))
        .start()
        .await;
    let port = gw.addr.port().to_string();
    let steps = readme_terminal_block();
    assert!(steps.len() >= 8, "{steps:?}");
    for (command, expected) in steps {
        assert!(command.contains("fngate call "), "{command}");
        let script = format!(
            "fngate() {{ \"$FNGATE_BIN\" \"$@\" --gateway https://localhost:$PORT; }}\n{command}"
        );
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(dir.path())
                .env("FNGATE_BIN", BIN)
                .env("PORT", &port)
                .env_remove("FNGATE_TOKEN")
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("`{command}` did not end"))
        .expect("run bash");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let want = expected
            .join("\n")
            .replace("localhost:8443", &format!("localhost:{port}"));
        assert!(
            glob(&want, printed.trim_end()),
            "README `{command}`:\n  says:\n{want}\n  printed:\n{printed}"
        );
    }
}
