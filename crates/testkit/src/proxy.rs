//! A TCP proxy that a test can cut, blackhole, slow down, make lossy and restore, to stand
//! for a network partition or a bad network.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

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

/// How forwarded data fares while the path is up.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Link {
    /// Added to the time every chunk of data takes through the proxy, in either direction.
    delay: Duration,
    /// The probability that a chunk closes its connection instead of being forwarded.
    drop_rate: f64,
}

/// Forwards connections from a free port of 127.0.0.1 to `target`. While it is cut, its live
/// connections are closed and new ones are closed as soon as they are accepted (as a peer
/// that resets them). While it is blackholed, its live connections and new ones are held
/// open and nothing is forwarded on them, ever again: they stand for connections to a host
/// that went away without a reset (its kernel's state for them is gone when the path comes
/// back), and are closed only when the proxy is cut or dropped. Restored, it forwards new
/// connections again. Stopped on drop.
///
/// While up, the path can also be made slow ([`TcpProxy::set_delay`]: every chunk of data
/// is held for a while before it is passed on) and lossy ([`TcpProxy::set_drop_rate`]: a
/// chunk closes its connection at random, as a flaky network path or middlebox); both
/// apply to live connections and new ones at once.
pub struct TcpProxy {
    /// The port it listens on.
    pub port: u16,
    mode: watch::Sender<Mode>,
    link: watch::Sender<Link>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `target` (`"127.0.0.1:5432"`). Must be called inside a Tokio
    /// runtime.
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, mode_rx) = watch::channel(Mode::Up);
        let (link, link_rx) = watch::channel(Link {
            delay: Duration::ZERO,
            drop_rate: 0.0,
        });
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
                        tokio::spawn(forward(client, target.clone(), rx, link_rx.clone()));
                    }
                }
            }
        });
        Self {
            port,
            mode,
            link,
            task,
        }
    }

    /// Holds every chunk of data, in either direction, for `delay` before passing it on
    /// (zero: none): a round trip through the proxy takes at least twice `delay` longer. The
    /// data is not throttled, only late.
    pub fn set_delay(&self, delay: Duration) {
        self.link.send_modify(|l| l.delay = delay);
    }

    /// Closes a connection, instead of forwarding a chunk of data read from either side,
    /// with probability `rate` per chunk (0: never, 1: at its first chunk). Panics unless
    /// `rate` is in `0.0..=1.0`.
    pub fn set_drop_rate(&self, rate: f64) {
        assert!(
            (0.0..=1.0).contains(&rate),
            "a drop rate is in 0..=1, not {rate}"
        );
        self.link.send_modify(|l| l.drop_rate = rate);
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

/// Forwards `client` to `target` until both sides are done, a chunk is dropped (both
/// closed), the path is cut (closed) or blackholed (held).
async fn forward(
    mut client: TcpStream,
    target: String,
    mut mode: watch::Receiver<Mode>,
    link: watch::Receiver<Link>,
) {
    let Ok(mut server) = TcpStream::connect(&target).await else {
        return;
    };
    let changed = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let both = async {
            tokio::try_join!(
                pump(client_read, server_write, link.clone()),
                pump(server_read, client_write, link.clone()),
            )
        };
        tokio::select! {
            _ = both => None,
            m = mode.wait_for(|m| *m != Mode::Up) => Some(m.map(|m| *m)),
        }
    };
    if let Some(Ok(Mode::Blackhole)) = changed {
        hold(client, Some(server), mode).await;
    }
}

/// Passes what `from` sends on to `to`, each chunk `link`'s delay after it was read, and
/// shuts `to` down once `from` is done. Fails (so the connection is closed) when a chunk is
/// dropped or either side fails.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    link: watch::Receiver<Link>,
) -> std::io::Result<()> {
    // Read and write apart, so that a delay holds each chunk without slowing the reads.
    let (chunks, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            let now = *link.borrow();
            if now.drop_rate > 0.0 && rand::random_bool(now.drop_rate) {
                return Err(std::io::Error::other("dropped"));
            }
            let _ = chunks.send((Instant::now() + now.delay, buf[..n].to_vec()));
        }
    };
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server on a free port of 127.0.0.1: its address.
    async fn echo() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = c.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Sends a byte and waits for it to come back: whether it did.
    async fn round_trip(c: &mut TcpStream) -> bool {
        let mut byte = [0u8];
        c.write_all(b"x").await.is_ok() && matches!(c.read(&mut byte).await, Ok(1))
    }

    #[tokio::test]
    async fn a_delay_holds_data_on_live_connections_and_new_ones() {
        let proxy = TcpProxy::start(&echo().await).await;
        let mut live = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert!(round_trip(&mut live).await);
        let delay = Duration::from_millis(150);
        proxy.set_delay(delay);
        for c in [
            &mut live,
            &mut TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap(),
        ] {
            let began = Instant::now();
            assert!(round_trip(c).await);
            // Held on the way there and on the way back.
            assert!(began.elapsed() >= 2 * delay, "{:?}", began.elapsed());
        }
        proxy.set_delay(Duration::ZERO);
        assert!(round_trip(&mut live).await);
    }

    #[tokio::test]
    async fn a_drop_rate_of_one_closes_every_connection_at_its_first_chunk() {
        let proxy = TcpProxy::start(&echo().await).await;
        let mut live = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert!(round_trip(&mut live).await);
        proxy.set_drop_rate(1.0);
        assert!(!round_trip(&mut live).await);
        let mut new = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert!(!round_trip(&mut new).await);
        proxy.set_drop_rate(0.0);
        let mut again = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        for _ in 0..100 {
            assert!(round_trip(&mut again).await);
        }
    }

    #[tokio::test]
    async fn a_drop_rate_between_drops_some_connections() {
        let proxy = TcpProxy::start(&echo().await).await;
        proxy.set_drop_rate(0.5);
        let mut dropped = 0;
        for _ in 0..40 {
            let mut c = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
            if !round_trip(&mut c).await {
                dropped += 1;
            }
        }
        // Each connection is dropped at its first chunk or at the echo, with probability
        // 3/4: all 40 or none of them has a chance of about 10^-5 or less.
        assert!((1..40).contains(&dropped), "{dropped}");
    }

    #[test]
    #[should_panic(expected = "a drop rate is in 0..=1")]
    fn a_drop_rate_above_one_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { TcpProxy::start("127.0.0.1:9").await.set_drop_rate(1.5) });
    }

    #[tokio::test]
    async fn cut_and_restored() {
        let proxy = TcpProxy::start(&echo().await).await;
        let mut live = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert!(round_trip(&mut live).await);
        proxy.set_up(false);
        assert!(!round_trip(&mut live).await);
        proxy.set_up(true);
        let mut new = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert!(round_trip(&mut new).await);
    }
}
