//! The `ferrule` binary.

mod cli;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    ferrule::gateway::keep_large_buffers_out_of_the_heap();
    let cli = cli::Cli::parse();
    if !cli.command.is_long_running() {
        // A report piped into `head` ends quietly when the reader has seen
        // enough, like any Unix tool; the gateway itself keeps ignoring
        // SIGPIPE (a closed socket is an error to handle, not a death).
        #[cfg(unix)]
        // SAFETY: restores the default action of one signal before any
        // thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // rumqttd (the demo's embedded broker) logs every client disconnect as an
    // error, so it is silent unless FERRULE_LOG asks for it.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRULE_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off,rumqttc=warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Plugin code runs on the workers in slices of one epoch tick (10 ms)
    // before it yields. Tokio would look at its timers and I/O only every
    // 61 task polls (over half a second with two spinning plugins); after
    // every poll instead, a call's deadline, another driver's tick and the
    // publisher's socket are served within about one slice.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(1)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
