//! tapir: a BGP daemon for routed hypervisors.
//!
//! - [`config`]: the TOML configuration, checked with line and column;
//! - [`peer`]: one task per neighbor driving the sans-IO `bgp` session;
//! - [`daemon`]: `tapir run`, the listener, signals;
//! - [`control`]: the control socket and its JSON; [`show`]: its tables.

#![forbid(unsafe_code)]

mod config;
mod control;
mod daemon;
mod peer;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tapir", version, about = "BGP for routed hypervisors")]
struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, default_value = control::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Run {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Log filter (tracing syntax), e.g. `info` or `tapir=debug`.
        #[arg(long, default_value = "info", env = "TAPIR_LOG")]
        log: String,
    },
    /// Check a configuration file and print its errors with line and column.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show the state of a running daemon.
    Show {
        #[command(subcommand)]
        what: Show,
    },
}

#[derive(Subcommand)]
enum Show {
    /// One line per session.
    Peers {
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Routes received from neighbors (Adj-RIB-In).
    Routes {
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tapir: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check { config } => match config::Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (router id {}, AS {}, {} neighbors)",
                    config.display(),
                    c.router_id,
                    c.local_as,
                    c.neighbors.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, log } => {
            let filter = match tracing_subscriber::EnvFilter::try_new(&log) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("tapir: --log {log:?}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let cfg = match config::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(daemon::run(cfg, &cli.socket)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tapir: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Show { what } => {
            let (req, json) = match what {
                Show::Peers { json } => (control::Request::ShowPeers, json),
                Show::Routes { json } => (control::Request::ShowRoutes, json),
            };
            match rt.block_on(control::request(&cli.socket, &req)) {
                Ok(control::Response::Error { message }) => {
                    eprintln!("tapir: {message}");
                    ExitCode::FAILURE
                }
                Ok(resp) => {
                    let text = match (&resp, json) {
                        (control::Response::Peers { peers }, true) => {
                            serde_json::to_string_pretty(peers).unwrap_or_default() + "\n"
                        }
                        (control::Response::Routes { routes }, true) => {
                            serde_json::to_string_pretty(routes).unwrap_or_default() + "\n"
                        }
                        (control::Response::Peers { peers }, false) => show::peers(peers),
                        (control::Response::Routes { routes }, false) => show::routes(routes),
                        (control::Response::Error { .. }, _) => String::new(),
                    };
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tapir: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
