//! Checks of the commands fngate starts (exec calls, lambda and http
//! instances) that `fngate check` reports as warnings: a program that is
//! not on `PATH` or a script file that is not there. The config stays
//! valid (the file may appear before the first call, PATH may differ where
//! the gateway runs), but a typo should not pass as "ok".

use std::ffi::OsStr;
use std::path::Path;

use super::{BackendSpec, Config, PoolSpec};

/// Extensions that make an argument look like a script file.
const SCRIPT_EXTENSIONS: &[&str] = &[
    "py", "js", "mjs", "cjs", "ts", "sh", "bash", "rb", "pl", "php", "lua", "jar", "R", "r",
];

/// Interpreter options whose next argument is code or a module, not a file.
const CODE_OPTIONS: &[&str] = &["-c", "-e", "-m", "--eval", "-E", "-r"];

impl Config {
    /// One message per command (of a function or a class) whose program
    /// does not resolve (on `PATH`, or as a file relative to the config's
    /// folder when it has a `/`) or whose script argument names a relative
    /// file that does not exist.
    pub fn command_warnings(&self) -> Vec<String> {
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        // A class's methods share its command: it is checked once, as the
        // class's key.
        let functions = (self.functions.iter().filter(|f| f.class.is_none()))
            .map(|f| (format!("apps.{}.functions.{}", f.app, f.name), &f.backend));
        let classes = (self.classes.iter())
            .map(|c| (format!("apps.{}.classes.{}", c.app, c.name), &c.backend));
        let mut warnings = Vec::new();
        for (table, backend) in functions.chain(classes) {
            let Some((command, cwd)) = started_command(backend) else {
                continue;
            };
            let key = format!("{table}.command");
            let program = &command[0];
            if !program_resolves(program, cwd, &path_var) {
                let place = if program.starts_with('/') {
                    format!("no executable file {program}")
                } else if program.contains('/') {
                    format!("no executable file {program} in {}", cwd.display())
                } else {
                    format!("{program} is not on PATH")
                };
                warnings.push(format!("{key}: {place}"));
            }
            for script in script_arguments(&command[1..]) {
                if !cwd.join(script).exists() && !names_a_handler(script, cwd) {
                    warnings.push(format!(
                        "{key}: {script} does not exist in {}",
                        cwd.display()
                    ));
                }
            }
        }
        warnings
    }
}

/// The command fngate starts for `backend`, and the folder it runs in.
fn started_command(backend: &BackendSpec) -> Option<(&[String], &Path)> {
    match backend {
        BackendSpec::Exec { command, cwd, .. } => Some((command, cwd)),
        BackendSpec::Lambda { pool } | BackendSpec::HttpInstances { pool, .. } => {
            let PoolSpec { command, cwd, .. } = pool;
            Some((command, cwd))
        }
        BackendSpec::Http { .. } => None,
    }
}

/// Whether `arg` is a Lambda handler (`dir/module.function`, as a runtime
/// client takes it) whose module file is there.
fn names_a_handler(arg: &str, cwd: &Path) -> bool {
    let Some((module, function)) = arg.rsplit_once('.') else {
        return false;
    };
    !function.is_empty()
        && !function.contains('/')
        && ["py", "js", "mjs", "cjs"]
            .iter()
            .any(|ext| cwd.join(format!("{module}.{ext}")).is_file())
}

/// Whether `program` names an executable file: with a `/`, relative to
/// `cwd` (commands run there); without one, in a `PATH` folder.
fn program_resolves(program: &str, cwd: &Path, path_var: &OsStr) -> bool {
    if program.contains('/') {
        return is_executable(&cwd.join(program));
    }
    std::env::split_paths(path_var).any(|dir| is_executable(&dir.join(program)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The arguments that look like relative paths of script files: no option,
/// no code after `-c`/`-e`/`-m`, no URL or `key=value`, no whitespace, and
/// either a `/` or a script extension.
fn script_arguments(args: &[String]) -> Vec<&str> {
    let mut found = Vec::new();
    let mut skip_next = false;
    for arg in args {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        if arg.starts_with('-') {
            skip_next = CODE_OPTIONS.contains(&arg.as_str());
            continue;
        }
        let plain = !arg.is_empty()
            && !arg.starts_with('/')
            && !arg.contains(|c: char| c.is_whitespace() || matches!(c, '=' | ':' | '$' | '*'));
        let scripty = arg.contains('/')
            || Path::new(arg)
                .extension()
                .and_then(OsStr::to_str)
                .is_some_and(|ext| SCRIPT_EXTENSIONS.contains(&ext));
        if plain && scripty {
            found.push(arg.as_str());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn script_files_are_told_from_code_options_and_urls() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["examples/square.py"], &["examples/square.py"]),
            (&["-u", "fn.py", "--flag"], &["fn.py"]),
            (&["-c", "print('a/b.py')"], &[]),
            (&["-m", "http.server"], &[]),
            (&["-e", "lib/x.js"], &[]),
            (&["http://host/x.py", "KEY=a/b", "/abs/x.py"], &[]),
            (&["hello", "world.txt"], &[]),
            (&["scripts/run"], &["scripts/run"]),
        ];
        for (given, want) in cases {
            assert_eq!(script_arguments(&args(given)), *want, "{given:?}");
        }
    }

    #[test]
    fn lambda_handlers_name_their_module_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("fns")).expect("fns dir");
        std::fs::write(dir.path().join("fns/warm.py"), "").expect("write module");
        std::fs::write(dir.path().join("app.mjs"), "").expect("write module");
        assert!(names_a_handler("fns/warm.handler", dir.path()));
        assert!(names_a_handler("app.handler", dir.path()));
        assert!(!names_a_handler("fns/cold.handler", dir.path()));
        assert!(!names_a_handler("fns/warm", dir.path()));
        assert!(!names_a_handler("fns/warm.", dir.path()));
    }

    #[test]
    fn programs_resolve_on_path_or_relative_to_the_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write tool");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(bin.join("plain"), "").expect("write plain");
        let path = std::env::join_paths([&bin]).expect("PATH");
        assert!(program_resolves("tool", dir.path(), &path));
        assert!(program_resolves("bin/tool", dir.path(), &path));
        assert!(program_resolves("./bin/tool", dir.path(), &path));
        assert!(
            !program_resolves("plain", dir.path(), &path),
            "not executable"
        );
        assert!(!program_resolves("missing", dir.path(), &path));
        assert!(!program_resolves("bin/missing", dir.path(), &path));
    }
}
