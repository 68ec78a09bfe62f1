//! `overlay`: parse the command line, set up logging, check the config, run the chosen roles
//! (or one admin command: `id`, `controller init`, `token create`, `revoke`).
//!
//! Exit codes: 0 after a clean shutdown (or a passed `--check`); 2 for a bad command line or
//! config (one message naming the file, the field and the fix); 1 when a server cannot start.

use std::process::ExitCode;

use clap::Parser;

use overlay::cli::{Cli, Plan, Tool};
use overlay::config::Config;

/// mimalloc rather than glibc malloc: under load, the many short-lived buffers of HTTP, JSON and
/// redb across the roles' threads cost ~15% of the throughput in glibc's arenas (see README,
/// Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    overlay::logging::init();

    if let Some(tool) = Tool::from_cli(&cli) {
        return run_tool(&cli, tool);
    }

    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = match Plan::new(&cli, config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}: {e}", cli.config.display());
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("{}: ok", cli.config.display());
        for line in plan.describe() {
            println!("  would run {line}");
        }
        return ExitCode::SUCCESS;
    }

    // Each connection is an open file; the common soft limit (1024) is one busy port's worth.
    overlay::web::raise_open_file_limit();
    let system = actix_rt::System::new();
    match system.block_on(overlay::up::serve(plan, cli.data_dir.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The admin commands: no server, but an actix System for the HTTP client. The config is read
/// only when the controller's URL is not given with --controller-url.
fn run_tool(cli: &Cli, tool: Result<Tool, String>) -> ExitCode {
    let mut tool = match tool {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(root) = tool.missing_root() {
        match Config::load(&cli.config) {
            Ok(c) => match c.controller.root {
                Some(fp) => *root = Some(fp),
                None => {
                    eprintln!(
                        "error: no controller root: pass --controller-root sha256:… (or set \
                         controller.root in {})",
                        cli.config.display()
                    );
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("error: {e} (or pass --controller-root)");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(url) = tool.missing_controller_url() {
        match Config::load(&cli.config) {
            Ok(c) => *url = Some(c.controller_url()),
            Err(e) => {
                eprintln!("error: {e} (or pass --controller-url URL)");
                return ExitCode::from(2);
            }
        }
    }
    if cli.check {
        println!("would {}", tool.describe());
        return ExitCode::SUCCESS;
    }
    match actix_rt::System::new().block_on(overlay::admin_client::run(tool)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
