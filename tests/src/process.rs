//! The compiled `server` binary run as an operator runs it: configured only through its
//! environment and the project's `config/` folder, its log read from stderr.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::api::Api;
use crate::{server_binary, workspace_dir, JWT_SECRET};

/// How long the server may take to say it is listening, or to exit when it must.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(30);

/// The server in `dir` with nothing but `env` (and the project's config folder) around it:
/// stderr piped, stdout discarded, killed if dropped.
pub fn server_command(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(server_binary());
    command
        .current_dir(dir)
        .env_clear()
        .env("CHAT_CONFIG_DIR", workspace_dir().join("config"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A running server process, killed when dropped; everything it logs is kept.
pub struct ServerProcess {
    child: Child,
    /// The port it said it listens on.
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// The test profile (a free port, two workers, [`JWT_SECRET`], plain-text logs at `info`)
    /// in the system's temporary folder, with `env` on top.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let profile = [
            ("APP_ENV", "test"),
            ("CHAT__SERVER__PORT", "0"),
            ("CHAT__SERVER__WORKERS", "2"),
            ("CHAT__AUTH__JWT_SECRET", JWT_SECRET),
            ("CHAT__LOG__FORMAT", "text"),
            ("CHAT__LOG__LEVEL", "info"),
            ("NO_COLOR", "1"),
        ];
        let mut command = server_command(&std::env::temp_dir(), &profile);
        command.envs(env.iter().copied());
        Self::spawn(command).await
    }

    /// Starts `command` and waits until the server logs that it is listening.
    pub async fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().expect("the server starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        let collected = log.clone();
        // Read to the end, so that logging never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut port_tx = Some(port_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening") {
                    if let (Some(port), Some(tx)) = (port_in(&line), port_tx.take()) {
                        let _ = tx.send(port);
                    }
                }
                let mut log = collected.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let port = match tokio::time::timeout(PROCESS_DEADLINE, port_rx).await {
            Ok(Ok(port)) => port,
            _ => panic!("the server did not start listening; its log:\n{}", log.lock().unwrap()),
        };
        Self { child, port, log }
    }

    pub fn api(&self) -> Api {
        Api::new(self.port)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no graceful anything.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("the process can be killed");
        let _ = self.child.wait().await;
    }

    /// SIGTERM: the graceful stop.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("the server is still running");
        let status =
            std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill runs");
        assert!(status.success());
    }

    /// Its exit status; fails (and kills it) if it is still running after the deadline.
    pub async fn wait_for_exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(PROCESS_DEADLINE, self.child.wait()).await {
            Ok(status) => status.expect("the exit status is readable"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!("the server did not stop within {PROCESS_DEADLINE:?}");
            }
        }
    }
}

/// The `port=…` field of the "listening" line (text or JSON, ANSI colour codes aside).
fn port_in(line: &str) -> Option<u16> {
    let start = line.find("port")? + "port".len();
    let digits: String =
        line[start..].chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|p| *p != 0)
}
