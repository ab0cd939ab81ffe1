//! The worker's command line (`fngate worker ...`) and its checked form:
//! which gateway, which function, where the token is, what to trust and
//! what to run.

use std::path::PathBuf;

use http::Uri;

use super::WorkerError;

/// The variable the Bearer token is read from unless `--token-env` names
/// another.
pub const DEFAULT_TOKEN_ENV: &str = "FNGATE_WORKER_TOKEN";

/// `fngate worker --gateway URL --function APP/FN [--token-env VAR]
/// [--cacert FILE] -- COMMAND...`, as typed; [`WorkerOptions`] is its
/// checked form.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The gateway's base URL, e.g. https://gateway.example:8443.
    #[arg(long, value_name = "URL")]
    pub gateway: String,
    /// The function whose calls this worker serves.
    #[arg(long, value_name = "APP/FN")]
    pub function: String,
    /// The environment variable holding the Bearer token; its scope must
    /// hold work:APP/FN or work:*.
    #[arg(long, value_name = "VAR", default_value = DEFAULT_TOKEN_ENV)]
    pub token_env: String,
    /// A PEM file of the CA certificates that sign the gateway's
    /// certificate (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// The instance to run, after `--`: a Lambda runtime client for a
    /// lambda function, an HTTP server listening on $PORT for an http one.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// A function's address: `app/function` (for a class, `app/class`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub app: String,
    pub function: String,
}

impl Target {
    /// Reads `APP/FN`: two names of the gateway's form, neither reserved.
    pub fn parse(text: &str) -> Result<Target, String> {
        let Some((app, function)) = text.split_once('/') else {
            return Err(format!("'{text}' is not APP/FUNCTION"));
        };
        if function.contains('/') {
            return Err(format!(
                "'{text}' is not APP/FUNCTION (one '/' between two names)"
            ));
        }
        crate::config::check_name(app).map_err(|e| format!("the app: {e}"))?;
        crate::config::check_name(function).map_err(|e| format!("the function: {e}"))?;
        Ok(Target {
            app: app.to_owned(),
            function: function.to_owned(),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app, self.function)
    }
}

/// What a worker runs with, checked.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The gateway's base URL: `https://host[:port]` and any path prefix,
    /// without a trailing `/`.
    pub gateway: String,
    pub target: Target,
    /// The variable holding the Bearer token (read when the worker runs,
    /// and kept out of the instance's environment).
    pub token_env: String,
    pub cacert: Option<PathBuf>,
    /// The program and its arguments; never empty.
    pub command: Vec<String>,
}

impl TryFrom<WorkerArgs> for WorkerOptions {
    type Error = WorkerError;

    fn try_from(args: WorkerArgs) -> Result<WorkerOptions, WorkerError> {
        let target = Target::parse(&args.function).map_err(WorkerError::Function)?;
        let gateway = gateway_base(&args.gateway).map_err(WorkerError::Gateway)?;
        if args.token_env.is_empty() || args.token_env.contains(['=', '\0']) {
            return Err(WorkerError::TokenEnv(format!(
                "'{}' is not a variable name",
                args.token_env
            )));
        }
        if args
            .command
            .first()
            .is_none_or(|program| program.is_empty())
        {
            return Err(WorkerError::NoCommand);
        }
        Ok(WorkerOptions {
            gateway,
            target,
            token_env: args.token_env,
            cacert: args.cacert,
            command: args.command,
        })
    }
}

/// Checks `--gateway`: an `https://` URL with a host, no query; returns it
/// without a trailing `/`. The token never travels in the clear.
fn gateway_base(text: &str) -> Result<String, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("'{text}' is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(other) => {
            return Err(format!(
                "'{text}': the scheme must be https, not {other} (the token must not travel in the clear)"
            ));
        }
        None => return Err(format!("'{text}' is not a URL: use https://HOST[:PORT]")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("'{text}' names no host"));
    }
    if uri.query().is_some() {
        return Err(format!("'{text}': a base URL takes no query"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    fn parse(args: &[&str]) -> Result<WorkerArgs, clap::Error> {
        let argv = std::iter::once("worker").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.worker)
    }

    fn options(args: &[&str]) -> Result<WorkerOptions, WorkerError> {
        WorkerOptions::try_from(parse(args).expect("the arguments parse"))
    }

    #[test]
    fn command_after_the_double_dash_keeps_its_own_flags() {
        let args = parse(&[
            "--gateway",
            "https://gw.example:8443",
            "--function",
            "demo/embed",
            "--",
            "python3",
            "-m",
            "awslambdaric",
            "--gateway",
        ])
        .unwrap();
        assert_eq!(args.command, ["python3", "-m", "awslambdaric", "--gateway"]);
        assert_eq!(args.token_env, DEFAULT_TOKEN_ENV);
        assert_eq!(args.cacert, None);
    }

    #[test]
    fn token_env_and_cacert_are_read() {
        let args = parse(&[
            "--gateway",
            "https://gw.example",
            "--function",
            "demo/api",
            "--token-env",
            "MY_TOKEN",
            "--cacert",
            "certs/dev-ca.pem",
            "--",
            "node",
            "server.js",
        ])
        .unwrap();
        assert_eq!(args.token_env, "MY_TOKEN");
        assert_eq!(args.cacert, Some(PathBuf::from("certs/dev-ca.pem")));
    }

    #[test]
    fn gateway_function_and_command_are_required() {
        let missing = [
            &["--function", "demo/fn", "--", "true"][..],
            &["--gateway", "https://gw.example", "--", "true"][..],
            &["--gateway", "https://gw.example", "--function", "demo/fn"][..],
            &[
                "--gateway",
                "https://gw.example",
                "--function",
                "demo/fn",
                "--",
            ][..],
        ];
        for args in missing {
            let error = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            // Clap's usage errors exit 2, as bad arguments should.
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn function_is_app_slash_name_of_valid_unreserved_names() {
        assert_eq!(
            Target::parse("demo/square").unwrap(),
            Target {
                app: "demo".to_owned(),
                function: "square".to_owned()
            }
        );
        assert_eq!(Target::parse("a-1/b_2").unwrap().to_string(), "a-1/b_2");
        for bad in [
            "demo",
            "demo/",
            "/square",
            "demo/square/x",
            "Demo/square",
            "demo/sq uare",
            "_/square",
            "demo/calls",
            "demo/_internal",
            "",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let error = Target::parse("demo/calls").unwrap_err();
        assert!(error.contains("reserved"), "{error}");
    }

    #[test]
    fn gateway_must_be_an_https_url_with_a_host() {
        let base = |url: &str| {
            options(&["--gateway", url, "--function", "demo/fn", "--", "true"]).map(|o| o.gateway)
        };
        assert_eq!(base("https://gw.example").unwrap(), "https://gw.example");
        assert_eq!(
            base("https://127.0.0.1:8443/").unwrap(),
            "https://127.0.0.1:8443"
        );
        assert_eq!(
            base("https://gw.example/fngate/").unwrap(),
            "https://gw.example/fngate"
        );
        for bad in [
            "http://gw.example",
            "gw.example",
            "gw.example:8443",
            "https://gw.example/?x=1",
            "not a url",
        ] {
            match base(bad) {
                Err(error @ WorkerError::Gateway(_)) => assert_eq!(error.exit_code(), 2),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_function_token_env_or_command_are_argument_errors() {
        let refused = |args: &[&str]| {
            let error = options(args).expect_err("refused");
            assert_eq!(error.exit_code(), 2, "{error}");
            error
        };
        let gateway = ["--gateway", "https://gw"];
        let function = [&gateway[..], &["--function", "demo/fn"]].concat();
        let error = refused(&[&gateway[..], &["--function", "demo", "--", "x"]].concat());
        assert!(matches!(error, WorkerError::Function(_)), "{error:?}");
        let error = refused(&[&function[..], &["--token-env", "A=B", "--", "x"]].concat());
        assert!(matches!(error, WorkerError::TokenEnv(_)), "{error:?}");
        let error = refused(&[&function[..], &["--", ""]].concat());
        assert!(matches!(error, WorkerError::NoCommand), "{error:?}");
    }
}
