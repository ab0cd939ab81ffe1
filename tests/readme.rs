//! The README's shell examples, run as written against the configs they
//! name: every ```sh block that calls a gateway is run line by line with the
//! system's bash and curl, and what each line prints is compared with the
//! `# ...` lines under it. Only `localhost:PORT` is rewritten (to the port of
//! the gateway under test), and `cargo run --release --` runs the binary
//! under test instead of building another.
//!
//! Expected output: the `# ` lines right under a command, joined with
//! newlines. `...` stands for any text. For `curl -i`, the first line is
//! the status line, then headers that must be among the answer's (in any
//! order), then the body.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// README sections whose shell blocks call a gateway, each run by a test
/// below. A curl example in another section fails
/// `every_readme_block_that_calls_a_gateway_is_run`.
const GATEWAY_SECTIONS: &[&str] = &[
    "Quick start",
    "Spawned calls",
    "Who may call",
    "OpenAPI",
    "Docker",
];

/// How long one README block may take (the spawn walkthrough waits for
/// calls of a few seconds).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Defines `cargo run --release [-- ARGS]` as the binary under test, in a
/// subshell (`$(...)`, `&`) by `exec` so a background job is the gateway
/// itself, as `cargo run` is on Unix.
const PRELUDE: &str = r#"
cargo() {
    if [ "${1-}" != run ] || [ "${2-}" != --release ]; then
        echo "README test: only 'cargo run --release' is run, not: cargo $*" >&2
        return 127
    fi
    shift 2
    if [ "${1-}" = -- ]; then shift; fi
    if [ "$BASHPID" != "$$" ]; then exec "$FNGATE_BIN" "$@"; fi
    "$FNGATE_BIN" "$@"
}
"#;

/// One fenced ```sh block of the README.
struct Block {
    /// The heading (`##` or `###`) it is under.
    section: String,
    /// Its first line's number in README.md, for messages.
    line: usize,
    text: String,
}

/// A command of a block and what the README says it prints.
#[derive(Debug)]
struct Step {
    line: usize,
    command: String,
    expected: Vec<String>,
}

fn readme_blocks() -> Vec<Block> {
    let readme = std::fs::read_to_string(common::repo_dir().join("README.md")).expect("README.md");
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut current: Option<Block> = None;
    let mut other_fence = false;
    for (i, line) in readme.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        if let Some(block) = current.as_mut() {
            if fence {
                blocks.extend(current.take());
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
        } else if line.trim() == "```sh" || line.trim() == "```bash" {
            current = Some(Block {
                section: section.clone(),
                line: i + 2,
                text: String::new(),
            });
        } else if fence {
            other_fence = !other_fence;
        } else if other_fence {
            continue;
        } else if let Some(title) = line.strip_prefix("## ").or(line.strip_prefix("### ")) {
            section = title.trim().to_owned();
        }
    }
    blocks
}

/// The sh blocks under the heading `section`.
fn blocks_in(section: &str) -> Vec<Block> {
    let blocks: Vec<Block> = readme_blocks()
        .into_iter()
        .filter(|b| b.section == section)
        .collect();
    assert!(
        !blocks.is_empty(),
        "README has no sh block under `{section}`"
    );
    blocks
}

fn calls_a_gateway(block: &Block) -> bool {
    block.text.contains("curl ")
}

/// Splits a block into commands, each with the `# ` lines right under it.
/// A `#` line after a blank line (or at the top) is a comment.
fn steps(block: &Block) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut after_command = false;
    let mut pending = String::new();
    let mut pending_line = 0;
    for (i, line) in block.text.lines().enumerate() {
        let number = block.line + i;
        if !pending.is_empty() || !line.trim_start().starts_with('#') {
            if line.trim().is_empty() && pending.is_empty() {
                after_command = false;
                continue;
            }
            if pending.is_empty() {
                pending_line = number;
            }
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                continue;
            }
            pending.push_str(line);
            steps.push(Step {
                line: pending_line,
                command: std::mem::take(&mut pending),
                expected: Vec::new(),
            });
            after_command = true;
        } else if after_command {
            let text = line.trim_start().strip_prefix('#').unwrap_or("");
            let text = text.strip_prefix(' ').unwrap_or(text);
            steps
                .last_mut()
                .expect("a command")
                .expected
                .push(text.to_owned());
        }
    }
    steps
}

/// Whether `text` matches `pattern`, where `...` stands for any text.
fn glob(pattern: &str, text: &str) -> bool {
    let pieces: Vec<&str> = pattern.split("...").collect();
    if pieces.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
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

/// Compares what a command printed with the README's lines; `Err` says how
/// they differ.
fn compare(expected: &[String], actual: &str) -> Result<(), String> {
    let actual = actual.replace("\r\n", "\n");
    let actual = actual.trim_end();
    if !actual.starts_with("HTTP/") {
        let want = expected.join("\n");
        return if glob(want.trim_end(), actual) {
            Ok(())
        } else {
            Err("the output differs".into())
        };
    }
    // curl -i: status line, headers (any order), body.
    let (head, body) = actual.split_once("\n\n").unwrap_or((actual, ""));
    let mut head = head.lines();
    let status = head.next().unwrap_or("").trim_end();
    let headers: Vec<&str> = head.map(str::trim_end).collect();
    let Some((want_status, rest)) = expected.split_first() else {
        return Err("the README shows no output".into());
    };
    if !glob(want_status, status) {
        return Err(format!("status line `{status}` is not `{want_status}`"));
    }
    let is_header = |l: &str| {
        l.split_once(": ").is_some_and(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    };
    let split = rest
        .iter()
        .position(|l| !is_header(l))
        .unwrap_or(rest.len());
    for want in &rest[..split] {
        if !headers.iter().any(|h| glob(want, h)) {
            return Err(format!("no header `{want}`"));
        }
    }
    let want_body = rest[split..].join("\n");
    if !want_body.is_empty() && !glob(&want_body, body.trim_end()) {
        return Err(format!("body `{body}` is not `{want_body}`"));
    }
    Ok(())
}

/// A bash running in its own process group, killed with the group on drop
/// (a gateway it started included).
struct Shell {
    child: Child,
    pgid: i32,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Shell {
    fn spawn(script: &str, cwd: &Path) -> Shell {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("{PRELUDE}\n{script}"))
            .current_dir(cwd)
            .env("FNGATE_BIN", common::BIN)
            .env_remove("RUST_LOG")
            .env_remove("FNGATE_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn bash");
        let pgid = child.id().expect("bash pid") as i32;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("stderr lock").push(line);
            }
        });
        Shell {
            child,
            pgid,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
    }

    /// Waits (bounded) for a gateway it runs to log its HTTPS address.
    async fn https_port(&self) -> u16 {
        let found = common::eventually(common::START_TIMEOUT, || {
            self.stderr
                .lock()
                .expect("stderr lock")
                .iter()
                .any(|l| common::addr_after(l, "listening on https://").is_some())
        })
        .await;
        assert!(found, "the gateway did not start:\n{}", self.stderr());
        let lines = self.stderr.lock().expect("stderr lock");
        lines
            .iter()
            .find_map(|l| common::addr_after(l, "listening on https://"))
            .expect("found above")
            .port()
    }

    /// Reads stdout to the end (bounded) and waits for the exit.
    async fn finish(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut stdout = self.child.stdout.take().expect("stdout piped");
        let mut out = String::new();
        let read = tokio::time::timeout(BLOCK_TIMEOUT, stdout.read_to_string(&mut out)).await;
        assert!(
            read.is_ok(),
            "the block did not end within {BLOCK_TIMEOUT:?}; so far:\n{out}\nstderr:\n{}",
            self.stderr()
        );
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        out
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        let _ = killpg(nix::unistd::Pid::from_raw(self.pgid), Signal::SIGKILL);
    }
}

/// Rewrites `localhost:FROM` to `localhost:TO` in a block's text.
fn with_ports(text: &str, ports: &[(u16, u16)]) -> String {
    ports.iter().fold(text.to_owned(), |text, (from, to)| {
        text.replace(&format!("localhost:{from}"), &format!("localhost:{to}"))
    })
}

/// Runs `steps` in one bash in `cwd` and checks each one's output and exit
/// status against the README.
async fn run_steps(block: &Block, steps: &[&Step], cwd: &Path, ports: &[(u16, u16)]) {
    let mut script = String::new();
    for (i, step) in steps.iter().enumerate() {
        script.push_str(&format!(
            "printf '\\n@@step {i}\\n'\n{}\nprintf '\\n@@end {i} %d\\n' $?\n",
            with_ports(&step.command, ports)
        ));
    }
    let mut shell = Shell::spawn(&script, cwd);
    let out = shell.finish().await;
    let mut failures = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let start = format!("\n@@step {i}\n");
        let Some(from) = out.find(&start).map(|at| at + start.len()) else {
            failures.push(format!(
                "README.md:{}: `{}` did not run",
                step.line, step.command
            ));
            break;
        };
        let end = format!("\n@@end {i} ");
        let Some(to) = out[from..].find(&end).map(|at| from + at) else {
            failures.push(format!(
                "README.md:{}: `{}` did not end",
                step.line, step.command
            ));
            break;
        };
        let printed = &out[from..to];
        let status = out[to + end.len()..].lines().next().unwrap_or("");
        if status != "0" {
            failures.push(format!(
                "README.md:{}: `{}` exited with {status}; it printed:\n{printed}",
                step.line, step.command
            ));
            continue;
        }
        if step.command.trim_start().starts_with("curl ") && step.expected.is_empty() {
            failures.push(format!(
                "README.md:{}: `{}` has no `# output` line under it",
                step.line, step.command
            ));
            continue;
        }
        let expected: Vec<String> = step.expected.iter().map(|l| with_ports(l, ports)).collect();
        if let Err(why) = compare(&expected, printed) {
            failures.push(format!(
                "README.md:{}: `{}`: {why}\n  README says:\n    {}\n  it printed:\n    {}",
                step.line,
                step.command,
                expected.join("\n    "),
                printed.trim_end().replace('\n', "\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "README block at line {} (`{}`) is not true:\n{}\n---- stderr ----\n{}",
        block.line,
        block.section,
        failures.join("\n"),
        shell.stderr()
    );
}

/// A temp copy of the quick start (gateway.toml and examples/).
fn quick_start_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    common::copy_quick_start(dir.path());
    dir
}

/// Replaces `from` with `to` in a config file, failing when `from` is not
/// there (the README test then needs to follow the config).
fn rewrite(config: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(config).expect("read config");
    assert!(text.contains(from), "{} has no `{from}`", config.display());
    std::fs::write(config, text.replacen(from, to, 1)).expect("write config");
}

/// Starts the quick-start gateway the way the README's first block says
/// (`cargo run --release` in the repository, here a copy of it on a free
/// port) and returns it with its port.
async fn start_quick_start(dir: &Path) -> (Shell, u16) {
    let blocks = blocks_in("Quick start");
    let serve = blocks[0].text.lines().next().unwrap_or("");
    let command = serve.split('#').next().unwrap_or("").trim();
    assert_eq!(
        command, "cargo run --release",
        "the quick start's first command"
    );
    rewrite(
        &dir.join("gateway.toml"),
        "listen = \"127.0.0.1:8443\"",
        "listen = \"127.0.0.1:0\"",
    );
    let shell = Shell::spawn(command, dir);
    let port = shell.https_port().await;
    (shell, port)
}

/// Runs every block of `section` that calls a gateway.
async fn run_section(section: &str, cwd: &Path, ports: &[(u16, u16)]) {
    for block in blocks_in(section).iter().filter(|b| calls_a_gateway(b)) {
        let all = steps(block);
        run_steps(block, &all.iter().collect::<Vec<_>>(), cwd, ports).await;
    }
}

#[tokio::test]
async fn quick_start_curl_lines_print_what_the_readme_says() {
    let dir = quick_start_dir();
    let (_gateway, port) = start_quick_start(dir.path()).await;
    run_section("Quick start", dir.path(), &[(8443, port)]).await;
}

#[tokio::test]
async fn spawn_walkthrough_prints_what_the_readme_says() {
    let dir = quick_start_dir();
    let (_gateway, port) = start_quick_start(dir.path()).await;
    run_section("Spawned calls", dir.path(), &[(8443, port)]).await;
}

#[tokio::test]
async fn openapi_lines_print_what_the_readme_says() {
    let dir = quick_start_dir();
    let (_gateway, port) = start_quick_start(dir.path()).await;
    run_section("OpenAPI", dir.path(), &[(8443, port)]).await;
}

/// The block starts its own gateway on examples/auth.toml in the
/// background; it listens on a free port instead of 8444.
#[tokio::test]
async fn development_credentials_work_as_the_readme_says() {
    let dir = quick_start_dir();
    let port = common::closed_port();
    rewrite(
        &dir.path().join("examples/auth.toml"),
        "listen = \"127.0.0.1:8444\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    run_section("Who may call", dir.path(), &[(8444, port)]).await;
}

/// Docker is not run here: the gateway runs on the image's files laid out
/// as the Dockerfile copies them (docker/gateway.toml beside examples/),
/// `docker cp` is a copy from that folder, and the rest of the block is
/// run as written.
#[tokio::test]
async fn docker_example_prints_what_the_readme_says() {
    let dockerfile = std::fs::read_to_string(common::repo_dir().join("Dockerfile")).unwrap();
    let workdir = "/srv/fngate";
    assert!(
        dockerfile.contains(&format!("WORKDIR {workdir}\n")),
        "the image's folder"
    );
    let image = quick_start_dir();
    std::fs::copy(
        common::repo_dir().join("docker/gateway.toml"),
        image.path().join("gateway.toml"),
    )
    .unwrap();
    rewrite(
        &image.path().join("gateway.toml"),
        "listen = \"0.0.0.0:8443\"",
        "listen = \"127.0.0.1:0\"",
    );
    let config = image.path().join("gateway.toml");
    let gateway = Shell::spawn(
        &format!("exec \"$FNGATE_BIN\" serve --config '{}'", config.display()),
        image.path(),
    );
    let port = gateway.https_port().await;

    let client = tempfile::tempdir().unwrap();
    for block in blocks_in("Docker").iter().filter(|b| calls_a_gateway(b)) {
        let all = steps(block);
        let (docker, rest): (Vec<&Step>, Vec<&Step>) =
            all.iter().partition(|s| s.command.starts_with("docker "));
        for step in &docker {
            docker_step(step, &dockerfile, workdir, image.path(), client.path());
        }
        run_steps(block, &rest, client.path(), &[(8443, port)]).await;
    }
}

/// Checks a `docker` line against the Dockerfile, and does what
/// `docker cp` would.
fn docker_step(step: &Step, dockerfile: &str, workdir: &str, image: &Path, client: &Path) {
    let words: Vec<&str> = step
        .command
        .split('#')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let at = |what: &str| format!("README.md:{}: {what}", step.line);
    match words.get(1) {
        Some(&"build") => {}
        Some(&"run") => {
            for pair in words.windows(2) {
                if pair[0] == "-v" {
                    let target = pair[1].split(':').nth(1).unwrap_or("");
                    assert!(
                        dockerfile.contains(&format!(" {target}")),
                        "{}",
                        at(&format!("the image makes no folder {target}"))
                    );
                }
                if pair[0] == "-p" {
                    let port = pair[1].rsplit(':').next().unwrap_or("");
                    assert!(
                        dockerfile.contains(&format!("EXPOSE {port}\n")),
                        "{}",
                        at(&format!("the image does not expose {port}"))
                    );
                }
            }
        }
        Some(&"cp") => {
            let source = words.get(2).and_then(|s| s.split_once(':')).map(|(_, p)| p);
            let rel = source
                .and_then(|p| p.strip_prefix(workdir))
                .unwrap_or_else(|| panic!("{}", at("docker cp from outside the image's folder")));
            let from: PathBuf = image.join(rel.trim_start_matches('/'));
            let dest = words.get(3).copied().unwrap_or(".");
            let name = from.file_name().expect("a file name");
            let to = if dest == "." {
                client.join(name)
            } else {
                client.join(dest)
            };
            std::fs::copy(&from, &to).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}",
                    at(&format!("{} is not in the image", from.display()))
                )
            });
        }
        _ => panic!("{}", at("a docker command this test does not know")),
    }
}

#[test]
fn every_readme_block_that_calls_a_gateway_is_run() {
    let blocks = readme_blocks();
    for block in blocks.iter().filter(|b| calls_a_gateway(b)) {
        assert!(
            GATEWAY_SECTIONS.contains(&block.section.as_str()),
            "README.md:{}: a curl example under `{}`: run it in tests/readme.rs",
            block.line,
            block.section
        );
    }
    for section in GATEWAY_SECTIONS {
        assert!(
            blocks
                .iter()
                .any(|b| b.section == *section && calls_a_gateway(b)),
            "no curl example under `{section}` any more: update tests/readme.rs"
        );
    }
}

#[test]
fn expected_output_matching() {
    assert!(glob("1764", "1764"));
    assert!(!glob("1764", "17640"));
    assert!(glob(r#"{"a":1,...}"#, r#"{"a":1,"b":2}"#));
    assert!(!glob(r#"{"a":1,...}"#, r#"{"a":2,"b":2}"#));
    assert!(glob("a...c...e", "abcde"));
    assert!(!glob("a...a", "a"));
    let lines = |s: &str| s.lines().map(str::to_owned).collect::<Vec<_>>();
    let answer =
        "HTTP/2 202\r\nlocation: /calls/fc-1\r\nretry-after: 1\r\n\r\n{\"status\":\"pending\"}";
    assert!(
        compare(
            &lines("HTTP/2 202\nretry-after: 1\nlocation: /calls/fc-...\n{\"status\":...}"),
            answer
        )
        .is_ok()
    );
    assert!(compare(&lines("HTTP/2 200\n{\"status\":...}"), answer).is_err());
    assert!(compare(&lines("HTTP/2 202\netag: x\n{\"status\":...}"), answer).is_err());
    let block = Block {
        section: "s".into(),
        line: 10,
        text: "# a comment\nX=1\ncurl a \\\n  b\n# out\n#\n# more\n\n# another comment\nfoo\n"
            .into(),
    };
    let got = steps(&block);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[1].command, "curl a   b");
    assert_eq!(got[1].expected, ["out", "", "more"]);
    assert!(got[2].expected.is_empty());
}
