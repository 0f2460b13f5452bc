//! A TCP proxy that a test can cut and restore, to stand for a network partition.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections from a free port of 127.0.0.1 to `target`. While it is cut, its live
/// connections are closed and new ones are closed as soon as they are accepted (as a peer
/// that resets them); restored, it forwards again. Stopped on drop.
pub struct TcpProxy {
    /// The port it listens on.
    pub port: u16,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `target` (`"127.0.0.1:5432"`). Must be called inside a Tokio
    /// runtime.
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, up_rx) = watch::channel(true);
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mut up = up_rx.clone();
                if !*up.borrow() {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up.wait_for(|u| !*u) => {}
                    }
                });
            }
        });
        Self { port, up, task }
    }

    /// Cuts (`false`) or restores (`true`) the path.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.set_up(false);
        self.task.abort();
    }
}
