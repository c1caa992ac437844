//! `hearth exec` and `hearth shell`: a command's stdio over the exec WebSocket.

use std::io::IsTerminal;

use anyhow::{bail, Context};
use hearth_api::client::{Client, ExecOutput};
use hearth_api::{ClientFrame, ExecRequest, ServerFrame};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Starts bash as a login shell when the image has it, else sh.
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

/// Puts the terminal in raw mode and restores it when dropped, also on error paths.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).context("cannot read terminal settings")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("cannot set raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Rows and columns of the terminal on stdout (or stdin), if any.
fn window_size() -> Option<(u16, u16)> {
    for ws in [
        rustix::termios::tcgetwinsize(std::io::stdout()),
        rustix::termios::tcgetwinsize(std::io::stdin()),
    ]
    .into_iter()
    .flatten()
    {
        if ws.ws_row > 0 && ws.ws_col > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

pub async fn shell(client: &Client, name: &str) -> anyhow::Result<i32> {
    if !std::io::stdin().is_terminal() {
        bail!("hearth shell needs a terminal on stdin (use hearth exec for scripts)");
    }
    let req = ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), SHELL.into()],
        tty: true,
        ..Default::default()
    };
    exec(client, name, req).await
}

/// Runs the command and returns its exit code.
pub async fn exec(client: &Client, name: &str, mut req: ExecRequest) -> anyhow::Result<i32> {
    if req.tty {
        let (rows, cols) = window_size().unwrap_or((24, 80));
        req.rows = rows;
        req.cols = cols;
        if !req.env.iter().any(|(k, _)| k == "TERM") {
            let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
            req.env.push(("TERM".into(), term));
        }
    }
    let (mut input, mut output) = client.exec(name, &req).await?;

    let (tx, mut rx) = mpsc::channel::<ClientFrame>(16);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if input.send(&f).await.is_err() {
                break;
            }
        }
    });

    let raw = if req.tty && std::io::stdin().is_terminal() {
        Some(RawMode::enter()?)
    } else {
        None
    };

    let stdin_tx = tx.clone();
    let stdin_task = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = stdin_tx.send(ClientFrame::StdinEof).await;
                    break;
                }
                Ok(n) => {
                    if stdin_tx
                        .send(ClientFrame::Stdin(buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });

    let sig_tx = tx.clone();
    let tty = req.tty;
    let signal_task = tokio::spawn(async move {
        let (Ok(mut winch), Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::window_change()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            let frame = tokio::select! {
                _ = winch.recv() => match window_size() {
                    Some((rows, cols)) if tty => ClientFrame::Resize { rows, cols },
                    _ => continue,
                },
                // In raw mode ^C arrives as a byte; these come from outside.
                _ = int.recv() => ClientFrame::Signal(libc::SIGINT),
                _ = term.recv() => ClientFrame::Signal(libc::SIGTERM),
            };
            if sig_tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    drop(tx);

    let result = pump_output(&mut output).await;
    stdin_task.abort();
    signal_task.abort();
    writer.abort();
    drop(raw);
    result
}

async fn pump_output(output: &mut ExecOutput) -> anyhow::Result<i32> {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(frame) = output.next().await {
        match frame? {
            ServerFrame::Stdout(d) => {
                stdout
                    .write_all(&d)
                    .await
                    .context("cannot write to stdout")?;
                stdout.flush().await.context("cannot write to stdout")?;
            }
            ServerFrame::Stderr(d) => {
                stderr
                    .write_all(&d)
                    .await
                    .context("cannot write to stderr")?;
                stderr.flush().await.context("cannot write to stderr")?;
            }
            ServerFrame::Exit(code) => return Ok(code),
            ServerFrame::Error(m) => bail!("{m}"),
        }
    }
    bail!("exec connection closed before the command exited")
}
