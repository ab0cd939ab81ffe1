//! `fngate check` beyond validation: a warning for each exec command that
//! would fail at its first call (a program not on PATH, a script that is not
//! there), and the configs the repository ships (the quick start, the auth
//! demo, the Docker image's) passing without one.

mod common;

use std::path::Path;

use common::{run_bin, run_bin_env};

/// A secret for configs with `[auth] jwt_secret_env = "FNGATE_JWT_SECRET"`.
const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

fn write(dir: &Path, rel: &str, text: &str) {
    std::fs::write(dir.join(rel), text).expect("write test file");
}

/// Runs `fngate check` on `dir/gateway.toml` holding `functions` and
/// returns (exit code, stdout, stderr).
async fn check(dir: &Path, functions: &str) -> (Option<i32>, String, String) {
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n{functions}");
    write(dir, "gateway.toml", &text);
    let config = dir.join("gateway.toml");
    run_bin(&["check", "--config", config.to_str().unwrap()], dir).await
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("warning:")).collect()
}

#[tokio::test]
async fn check_warns_when_an_exec_script_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = check(
        dir.path(),
        "[apps.demo.functions.square]\nbackend = \"exec\"\ncommand = [\"python3\", \"examples/sqaure.py\"]\n",
    )
    .await;
    assert_eq!(code, Some(0), "a warning keeps the config valid: {stderr}");
    assert!(stdout.contains(": ok, with 1 warning"), "{stdout}");
    let found = warnings(&stderr);
    assert_eq!(found.len(), 1, "{stderr}");
    assert!(
        found[0].contains("apps.demo.functions.square.command")
            && found[0].contains("examples/sqaure.py does not exist"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_warns_when_an_exec_program_is_not_on_path() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "fn.py", "print(1)\n");
    let (code, stdout, stderr) = check(
        dir.path(),
        "[apps.demo.functions.f]\nbackend = \"exec\"\ncommand = [\"pyhton3\", \"fn.py\"]\n\n\
         [apps.demo.functions.g]\nbackend = \"exec\"\ncommand = [\"bin/run\", \"--fast\"]\n",
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(": ok, with 2 warnings"), "{stdout}");
    let found = warnings(&stderr);
    assert_eq!(found.len(), 2, "{stderr}");
    assert!(
        found
            .iter()
            .any(|w| w.contains("apps.demo.functions.f.command")
                && w.contains("pyhton3 is not on PATH")),
        "{stderr}"
    );
    assert!(
        found
            .iter()
            .any(|w| w.contains("apps.demo.functions.g.command")
                && w.contains("no executable file bin/run")),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_is_quiet_when_every_command_resolves() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lib")).unwrap();
    write(dir.path(), "lib/fn.py", "print(1)\n");
    let (code, stdout, stderr) = check(
        dir.path(),
        "[apps.demo.functions.f]\nbackend = \"exec\"\ncommand = [\"python3\", \"-u\", \"lib/fn.py\"]\n\n\
         [apps.demo.functions.g]\nbackend = \"exec\"\ncommand = [\"python3\", \"-c\", \"print(2)\"]\n\n\
         [apps.demo.functions.h]\nbackend = \"exec\"\ncommand = [\"sh\", \"-c\", \"exec cat\"]\n",
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(warnings(&stderr).is_empty(), "{stderr}");
    assert!(
        stdout.lines().next().unwrap_or("").ends_with(": ok"),
        "{stdout}"
    );
}

/// Runs `fngate check` on a shipped config and wants no warning at all.
async fn assert_checks_cleanly(config: &Path, cwd: &Path) -> String {
    let (code, stdout, stderr) = run_bin_env(
        &["check", "--config", config.to_str().unwrap()],
        cwd,
        &[("FNGATE_JWT_SECRET", SECRET)],
    )
    .await;
    assert_eq!(code, Some(0), "{}: {stderr}", config.display());
    assert!(
        warnings(&stderr).is_empty() && stdout.lines().next().unwrap_or("").ends_with(": ok"),
        "{}:\n{stdout}\n{stderr}",
        config.display()
    );
    stdout
}

#[tokio::test]
async fn shipped_configs_pass_check_without_warnings() {
    let root = common::repo_dir();
    let quick = assert_checks_cleanly(&root.join("gateway.toml"), root).await;
    assert!(quick.contains("/demo/square"), "{quick}");
    let auth = assert_checks_cleanly(&root.join("examples/auth.toml"), root).await;
    assert!(auth.contains("/demo/echo"), "{auth}");
}

/// The image's layout: the Dockerfile copies docker/gateway.toml and
/// examples/ side by side into /srv/fngate.
#[tokio::test]
async fn docker_image_config_passes_check_in_the_image_layout() {
    let dockerfile = std::fs::read_to_string(common::repo_dir().join("Dockerfile")).unwrap();
    for line in [
        "COPY --chown=fngate:fngate docker/gateway.toml /srv/fngate/gateway.toml",
        "COPY --chown=fngate:fngate examples /srv/fngate/examples",
    ] {
        assert!(
            dockerfile.contains(line),
            "the Dockerfile no longer has `{line}`"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    common::copy_quick_start(dir.path());
    std::fs::copy(
        common::repo_dir().join("docker/gateway.toml"),
        dir.path().join("gateway.toml"),
    )
    .unwrap();
    assert_checks_cleanly(&dir.path().join("gateway.toml"), dir.path()).await;
}

/// docker/gateway.toml says it is the quick-start config listening on all
/// interfaces; hold it to that.
#[test]
fn docker_config_is_the_quick_start_config_on_all_interfaces() {
    let root = common::repo_dir();
    let quick = std::fs::read_to_string(root.join("gateway.toml")).unwrap();
    let docker = std::fs::read_to_string(root.join("docker/gateway.toml")).unwrap();
    let body = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("# fngate quick-start configuration."))
            .filter(|l| !l.starts_with("listen ="))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        docker
            .lines()
            .any(|l| l.starts_with("listen = \"0.0.0.0:8443\"")),
        "docker/gateway.toml listens on all interfaces"
    );
    assert_eq!(
        body(&docker),
        body(&quick),
        "docker/gateway.toml differs from gateway.toml beyond `listen`: copy the change over"
    );
}
