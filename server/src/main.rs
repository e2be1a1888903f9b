//! `server`: runs the chat server (the default), with the configuration of `config/` and
//! `CHAT__*` environment variables.

use std::process::ExitCode;

const USAGE: &str = "usage: server [serve]\n\n\
  serve    run the chat server (default)\n\n\
Configuration: config/default.toml, config/$APP_ENV.toml, CHAT__SECTION__KEY env vars.";

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    match command.as_deref() {
        None | Some("serve") => {}
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("error: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, the whole cause chain, no backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let settings = server::Settings::load()?;
    server::init_logging(&settings.log);
    let app = server::build(settings).await?;
    app.run_until_stopped().await?;
    Ok(())
}
