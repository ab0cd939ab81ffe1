//! The `fngate` command: parses the command line, loads the configuration
//! and runs the gateway library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use fngate::backend::http::HttpClients;
use fngate::config::Config;
use fngate::registry::Registry;

/// mimalloc instead of the system allocator: a request makes many small,
/// short-lived allocations, and glibc's malloc and free were about a fifth
/// of the gateway's user time on the sync bench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fngate",
    version,
    about = "HTTPS gateway that gives deployed functions stable web URLs"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = "gateway.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the configuration and print every route; with [admin],
    /// also what a reload of the running gateway would change.
    Check,
    /// Mint an HS256 JWT with the configured secret (for development).
    Token {
        /// The token's subject (`sub`).
        #[arg(long)]
        sub: String,
        /// Space-separated scopes, e.g. 'invoke:demo/*'.
        #[arg(long)]
        scope: String,
        /// How long the token is valid, e.g. 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Print a new random API key and the [[auth.api_keys]] entry to paste.
    Keygen {
        /// The key's name (its principal).
        #[arg(long, default_value = "my-service")]
        name: String,
    },
    /// Serve a function's calls from this machine: run COMMAND as its
    /// instance and pull its calls from the gateway.
    Worker(fngate::worker::WorkerArgs),
    /// Call a function and print its result as JSON.
    ///
    /// Exit status: 0 ok, 1 the function failed, 2 usage, 3 refused (4xx),
    /// 4 gateway or backend error (5xx), 5 unreachable or untrusted, 6
    /// still pending after --wait. The token comes from FNGATE_TOKEN.
    Call(fngate::cli::call::CallArgs),
    /// Push the function and class tables of FILE.toml's [apps.*] through
    /// a gateway's admin API, printing what each changed (exit status: 0
    /// deployed, 1 a table refused, 2 usage, 4 gateway error, 5
    /// unreachable or untrusted). The token comes from FNGATE_ADMIN_TOKEN.
    Deploy(fngate::cli::deploy::DeployArgs),
}

/// Exit status for an unusable configuration, or anything else that
/// stops the start (a store that cannot be opened or is corrupt, TLS
/// files, an address in use).
const EXIT_CONFIG: u8 = 2;

/// 2 when the gateway could not start, 1 when it failed while serving.
fn exit_status(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<fngate::ServeError>() {
        Some(fngate::ServeError::StoreFailed(_)) | None => 1,
        Some(_) => EXIT_CONFIG,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let command = match cli.command {
        Some(Command::Worker(args)) => return worker(args),
        // A client: --config only says where the dev CA is.
        Some(Command::Call(args)) => {
            return ExitCode::from(fngate::cli::call::run(args, &cli.config));
        }
        Some(Command::Deploy(args)) => {
            return ExitCode::from(fngate::cli::deploy::run(args, &cli.config));
        }
        command => command,
    };
    if let Some(Command::Keygen { name }) = &command {
        keygen(name);
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fngate: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{}: {warning}", config.file.display());
    }
    match command.unwrap_or(Command::Serve) {
        Command::Check => {
            check(&config);
            ExitCode::SUCCESS
        }
        Command::Token { sub, scope, ttl } => token(&config, &sub, &scope, &ttl),
        Command::Keygen { .. } | Command::Worker(_) | Command::Call(_) | Command::Deploy(_) => {
            unreachable!("handled before the config is read")
        }
        Command::Serve => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fngate: {e:#}");
                ExitCode::from(exit_status(&e))
            }
        },
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn check(config: &Config) {
    let registry = Registry::from_config(config, &HttpClients::new());
    // Problems that do not make the config unusable, but that "ok" alone
    // would hide: a command that is not installed, a script not there.
    let warnings = config.command_warnings();
    let file = config.file.display();
    for warning in &warnings {
        eprintln!("fngate check: warning: {file}: {warning}");
    }
    match warnings.len() {
        0 => println!("{file}: ok"),
        1 => println!("{file}: ok, with 1 warning"),
        n => println!("{file}: ok, with {n} warnings"),
    }
    for function in registry.functions() {
        let methods = if function.spec.is_passthrough() {
            format!(
                "{} (any path below)",
                function.spec.allow_header().replace(", ", ",")
            )
        } else {
            function.spec.allow_header().replace(", ", ",")
        };
        println!(
            "{methods} {} -> {}",
            function.spec.route(),
            function.describe()
        );
    }
    match fngate::cli::check::reload_preview(config) {
        Ok(changes) if changes.is_empty() => {
            println!("a reload of the running gateway would change nothing");
        }
        Ok(changes) => {
            println!("a reload of the running gateway would change:");
            let lines = [
                ("add", &changes.added),
                ("change", &changes.changed),
                ("remove", &changes.removed),
                ("restart to apply", &changes.restart_needed),
            ];
            for (what, routes) in lines {
                for route in routes {
                    println!("  {what} {route}");
                }
            }
        }
        Err(why) => println!("({why}: nothing to compare with)"),
    }
}

fn keygen(name: &str) {
    let (key, sha256) = fngate::auth::new_api_key();
    println!("API key (give it to the caller; it is not stored anywhere): {key}");
    println!();
    println!("[[auth.api_keys]]");
    println!("name = {name:?}");
    println!("sha256 = \"{sha256}\"");
    println!("scopes = [\"invoke:*\"]");
}

fn token(config: &Config, subject: &str, scope: &str, ttl: &str) -> ExitCode {
    let secret = match config.auth.as_ref().and_then(|a| a.jwt.as_ref()) {
        Some(fngate::config::JwtKeys::Secret(secret)) => secret,
        _ => {
            eprintln!(
                "fngate token: needs [auth] jwt_secret_env (an HS256 secret) in {}",
                config.file.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let ttl = match fngate::config::parse_duration(ttl) {
        Ok(ttl) => ttl,
        Err(e) => {
            eprintln!("fngate token: --ttl: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for part in scope.split_whitespace() {
        if let Err(e) = fngate::config::check_scope(part) {
            eprintln!("fngate token: --scope: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let auth = config.auth.as_ref().expect("checked above");
    match fngate::auth::mint_hs256(
        secret,
        subject,
        scope,
        ttl,
        auth.issuer.as_deref(),
        auth.audience.as_deref(),
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fngate token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    // Single-threaded: this runtime is worker 0; `Gateway::run` starts one
    // more thread with a runtime of its own per extra worker.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tokio::task::LocalSet::new().run_until(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        let served = fngate::serve(config, shutdown).await;
        // The access log's last lines are written before the process ends.
        fngate::metrics::access_log::flush(std::time::Duration::from_secs(2));
        // Whatever a drain left running (a call past the grace, a sweep of
        // escaped processes still queued) does not outlive the gateway.
        fngate::processes::kill_all();
        served?;
        Ok(())
    }))
}

/// `fngate worker`: no config file; 0 on a clean stop, 1 when the gateway
/// refuses the worker, 2 for bad arguments.
fn worker(args: fngate::worker::WorkerArgs) -> ExitCode {
    let failed = |e: fngate::worker::WorkerError| {
        eprintln!("fngate worker: {e}");
        ExitCode::from(e.exit_code())
    };
    let options = match fngate::worker::WorkerOptions::try_from(args) {
        Ok(options) => options,
        Err(e) => return failed(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fngate worker: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        let served = fngate::worker::run(options, shutdown).await;
        fngate::processes::kill_all();
        served
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(e),
    }
}

/// SIGTERM or Ctrl-C starts a graceful drain; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        tracing::error!("cannot watch SIGTERM");
        return;
    };
    let mut signals = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        signals += 1;
        if signals > 1 {
            tracing::warn!("second signal: killing running functions and exiting now");
            // Nothing of a function may outlive the gateway, to run again
            // beside its own retry after the restart.
            fngate::processes::kill_all();
            std::process::exit(130);
        }
        shutdown.cancel();
    }
}
