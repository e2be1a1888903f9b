//! `server`: runs the chat server (the default), or moves its data in and out of the
//! configured store. Configuration: `config/` and `CHAT__*` environment variables.

use std::io::{BufReader, BufWriter};
use std::process::ExitCode;

/// mimalloc instead of the system allocator: a request allocates and frees many small
/// buffers across threads, where glibc's allocator spent about a tenth of the server's time
/// (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: server [serve | export | import]\n\n\
  serve    run the chat server (default)\n\
  export   write every user, conversation, group, message and read position of the\n\
           configured store to stdout as newline-delimited JSON\n\
  import   read such a dump from stdin into the configured store (records already\n\
           present are skipped)\n\n\
Configuration: config/default.toml, config/$APP_ENV.toml, CHAT__SECTION__KEY env vars,\n\
e.g. CHAT__STORAGE__BACKEND=postgres CHAT__STORAGE__URL=postgres://... server import < dump.ndjson";

enum Command {
    Serve,
    Export,
    Import,
}

fn main() -> ExitCode {
    let command = match std::env::args().nth(1).as_deref() {
        None | Some("serve") => Command::Serve,
        Some("export") => Command::Export,
        Some("import") => Command::Import,
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("error: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, the whole cause chain, no backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let settings = server::Settings::load()?;
    server::init_logging(&settings.log);
    match command {
        Command::Serve => {
            let app = server::build(settings).await?;
            app.run_until_stopped().await?;
        }
        Command::Export => {
            let storage = server::open_storage(&settings.storage).await?;
            let mut out = BufWriter::new(std::io::stdout());
            let stats = server::transfer::export(&storage, &mut out).await?;
            eprintln!(
                "exported {} users, {} conversations, {} groups, {} messages, {} memberships",
                stats.users, stats.conversations, stats.groups, stats.messages, stats.members
            );
        }
        Command::Import => {
            let storage = server::open_storage(&settings.storage).await?;
            let stdin = BufReader::new(std::io::stdin());
            let stats = server::transfer::import(&storage, settings.auth.bcrypt_cost, stdin).await?;
            eprintln!(
                "imported {} users, {} conversations, {} groups, {} messages, {} memberships \
                 ({} already present); rejected {} users (listed above) and {} of their records",
                stats.users,
                stats.conversations,
                stats.groups,
                stats.messages,
                stats.members,
                stats.skipped,
                stats.rejected_users.len(),
                stats.rejected_with_users
            );
        }
    }
    Ok(())
}
