//! A TCP proxy that a test can cut, blackhole and restore, to stand for a network partition.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forwards.
    Up,
    /// Closes them (as a peer that resets them).
    Cut,
    /// Holds them open and forwards nothing (as a host gone without a reset).
    Blackhole,
}

/// Forwards connections from a free port of 127.0.0.1 to `target`. While it is cut, its live
/// connections are closed and new ones are closed as soon as they are accepted (as a peer
/// that resets them). While it is blackholed, its live connections and new ones are held
/// open and nothing is forwarded on them, ever again: they stand for connections to a host
/// that went away without a reset (its kernel's state for them is gone when the path comes
/// back), and are closed only when the proxy is cut or dropped. Restored, it forwards new
/// connections again. Stopped on drop.
pub struct TcpProxy {
    /// The port it listens on.
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `target` (`"127.0.0.1:5432"`). Must be called inside a Tokio
    /// runtime.
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, mode_rx) = watch::channel(Mode::Up);
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let rx = mode_rx.clone();
                let now = *rx.borrow();
                match now {
                    Mode::Cut => drop(client),
                    Mode::Blackhole => {
                        tokio::spawn(hold(client, None, rx));
                    }
                    Mode::Up => {
                        tokio::spawn(forward(client, target.clone(), rx));
                    }
                }
            }
        });
        Self { port, mode, task }
    }

    /// Cuts (`false`) or restores (`true`) the path.
    pub fn set_up(&self, up: bool) {
        self.mode
            .send_replace(if up { Mode::Up } else { Mode::Cut });
    }

    /// Blackholes the path: every connection, live or new, is held open and forwards
    /// nothing, until [`TcpProxy::set_up`] (new connections are forwarded again; the held
    /// ones stay dead).
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }
}

/// Forwards `client` to `target` until either side closes, the path is cut (closed) or
/// blackholed (held).
async fn forward(mut client: TcpStream, target: String, mut mode: watch::Receiver<Mode>) {
    let Ok(mut server) = TcpStream::connect(&target).await else {
        return;
    };
    let changed = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => None,
        m = mode.wait_for(|m| *m != Mode::Up) => Some(m.map(|m| *m)),
    };
    if let Some(Ok(Mode::Blackhole)) = changed {
        hold(client, Some(server), mode).await;
    }
}

/// Holds `client` (and `server`) open, reading and writing nothing, until the path is cut or
/// the proxy dropped.
async fn hold(client: TcpStream, server: Option<TcpStream>, mut mode: watch::Receiver<Mode>) {
    let _held = (client, server);
    let _ = mode.wait_for(|m| *m == Mode::Cut).await;
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.set_up(false);
        self.task.abort();
    }
}
