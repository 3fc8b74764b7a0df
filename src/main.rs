//! The `wsgate` binary: parse flags, start logging, run the chosen command until a signal.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use wsgate::config::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = wsgate::logging::filter(&cli.log).unwrap_or_else(|e| {
        eprintln!(
            "wsgate: --log `{}` is not a valid filter ({e}); using `info`",
            cli.log
        );
        EnvFilter::new("info")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let quiet = wsgate::logging::QuietLibraries::default();
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(quiet)
            .init(),
        LogFormat::Json => logs.json().finish().with(quiet).init(),
    }

    match cli.command {
        Command::Crd => {
            print!("{}", wsgate::api::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Check(args) => {
            let mut out = std::io::stdout().lock();
            let mut diag = std::io::stderr().lock();
            match wsgate::check::run(&args.paths, &mut out, &mut diag) {
                Ok(wsgate::check::Outcome::AllAccepted) => ExitCode::SUCCESS,
                Ok(wsgate::check::Outcome::Problems) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("wsgate check: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Probe(args) => {
            let probe = wsgate::probe::run(&args.admin, &args.proxy);
            match block_on(probe) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wsgate probe: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ScaleToZero(args) => {
            let stop = wsgate::scale_to_zero::run(
                &args.deployment,
                args.namespace.as_deref(),
                args.timeout,
            );
            match block_on(stop) {
                Ok(wsgate::scale_to_zero::Stopped::NoDeployment) => {
                    println!("no Deployment {}: nothing to stop", args.deployment);
                    ExitCode::SUCCESS
                }
                Ok(wsgate::scale_to_zero::Stopped::Drained(pods)) => {
                    println!(
                        "Deployment {} scaled to 0; its {pods} pod(s) are gone",
                        args.deployment
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wsgate scale-to-zero: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Controller(args) => match block_on(wsgate::controller::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wsgate: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Standalone(args) => match block_on(wsgate::standalone::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wsgate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs `future` on a multi-threaded runtime.
fn block_on<T, E>(future: impl std::future::Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future)?)
}
