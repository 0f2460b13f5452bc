//! The HTTP server itself, over real sockets: `catalog::run` on a local listener (in-memory
//! SQLite, in-process cache), driven by raw TCP clients that do what well-behaved HTTP
//! clients do not: oversized bodies on keep-alive connections, trickled headers, stalled
//! bodies, too many connections and requests.
#![allow(clippy::unwrap_used)]

use catalog::config::{Cli, Command};
use clap::Parser;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A `catalog::run` on a free local port; stopped (gracefully) by [`Server::stop`] or on drop.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    async fn start(args: &[&str]) -> Self {
        let mut argv = vec![
            "catalog",
            "serve",
            "--database-url",
            "sqlite::memory:",
            "--redis-url",
            "",
            "--seed-products",
            "30",
        ];
        argv.extend_from_slice(args);
        let Command::Serve(config) = Cli::try_parse_from(argv).unwrap().command;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(catalog::run(listener, config, async move {
            let _ = stopped.await;
        }));
        let server = Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        // Ready once it answers (the listener accepts before the service is built).
        let mut c = server.connect().await;
        let r = c.request("GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n").await;
        assert_eq!(r.status, 200, "{r:?}");
        server
    }

    async fn connect(&self) -> Client {
        Client {
            stream: TcpStream::connect(self.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The Error body's code (asserting its shape).
    fn code(&self) -> &str {
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "not an Error body: {self:?}"
        );
        self.body["error"]["code"].as_str().unwrap()
    }
}

/// A raw HTTP/1.1 client on one TCP connection.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn request(&mut self, head: &str) -> Reply {
        self.stream.write_all(head.as_bytes()).await.unwrap();
        self.read_reply().await.unwrap()
    }

    /// Reads one response (with a `content-length`), or `None` if the connection closed
    /// before a whole one arrived.
    async fn read_reply(&mut self) -> Option<Reply> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        while self.buf.len() < end + len {
            if !self.fill().await {
                return None;
            }
        }
        let body_bytes: Vec<u8> = self.buf.drain(..end + len).skip(end).collect();
        let body = serde_json::from_slice(&body_bytes).unwrap_or(Value::Null);
        Some(Reply {
            status,
            headers,
            body,
        })
    }

    /// Whether the server closed the connection (EOF or a reset) within `limit`, reading and
    /// dropping whatever it sends meanwhile.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async { while self.fill().await {} })
            .await
            .is_ok()
    }

    /// Reads more; false at EOF or on a reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
}

#[tokio::test]
async fn an_oversized_body_on_a_used_keep_alive_connection_gets_its_413() {
    let server = Server::start(&[]).await;
    let mut c = server.connect().await;
    let first = c
        .request("GET /products/p1 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    assert_eq!(first.status, 200);
    let body = vec![b'x'; 3 * 1024 * 1024];
    let head = format!(
        "PUT /products/p1 HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    c.stream.write_all(head.as_bytes()).await.unwrap();
    // In pieces, letting the server run between them (one runtime thread): it sees the
    // head, and the length, long before the body is all sent.
    for piece in body.chunks(64 * 1024) {
        tokio::task::yield_now().await;
        c.stream
            .write_all(piece)
            .await
            .expect("the whole body is taken in, not refused mid-way");
    }
    let r = c
        .read_reply()
        .await
        .expect("a response, not a closed connection");
    assert_eq!((r.status, r.code()), (413, "payload_too_large"), "{r:?}");
    assert_eq!(r.header("connection"), None, "read to its end: kept alive");
    let again = c
        .request("GET /products/p1 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    assert_eq!(again.status, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_oversized_chunked_body_gets_its_413() {
    let server = Server::start(&[]).await;
    let mut c = server.connect().await;
    let first = c
        .request("GET /products/p1 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    assert_eq!(first.status, 200);
    let head = "POST /products HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    c.stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..32 {
        tokio::task::yield_now().await;
        c.stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        c.stream.write_all(&chunk).await.unwrap();
        c.stream.write_all(b"\r\n").await.unwrap();
    }
    c.stream.write_all(b"0\r\n\r\n").await.unwrap();
    let r = c
        .read_reply()
        .await
        .expect("a response, not a closed connection");
    assert_eq!((r.status, r.code()), (413, "payload_too_large"), "{r:?}");
    server.stop().await.unwrap();
}

/// Far above every timeout these tests set: a connection not cut off by then never is.
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off() {
    let server = Server::start(&["--header-timeout", "1s"]).await;
    let c = server.connect().await;
    let (mut read, mut write) = c.stream.into_split();
    // One byte of a header every 50 ms: a request head that never ends.
    let trickle = tokio::spawn(async move {
        write
            .write_all(b"GET /products/p1 HTTP/1.1\r\nx-slow: ")
            .await?;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..1000 {
            tick.tick().await;
            write.write_all(b"a").await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut chunk = [0u8; 1024];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the trickling client is still connected");
    trickle.abort();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = Server::start(&["--header-timeout", "1s"]).await;
    let mut c = server.connect().await;
    let r = c
        .request("GET /products/p1 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    assert_eq!(r.status, 200);
    assert!(
        c.closed_within(PATIENCE).await,
        "an idle connection is kept"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_stalled_body_gets_a_408_and_the_connection_closed() {
    let server = Server::start(&["--request-timeout", "1s", "--max-in-flight", "1"]).await;
    let mut c = server.connect().await;
    let head = "PUT /products/p1 HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"name\"";
    c.stream.write_all(head.as_bytes()).await.unwrap();
    let r = tokio::time::timeout(PATIENCE, c.read_reply())
        .await
        .expect("an answer to the stalled body")
        .expect("a response before the close");
    assert_eq!((r.status, r.code()), (408, "request_timeout"), "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_within(PATIENCE).await);
    // The product is as it was, and the server serves on.
    let mut other = server.connect().await;
    let p = other
        .request("GET /products/p1 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    assert_eq!(
        (p.status, &p.body["name"]),
        (200, &Value::from("Product 1"))
    );
    server.stop().await.unwrap();
}

/// A connection that got a 200 for `GET /products/p1`, retried (on new connections) while
/// the server refuses connections or requests; `None` if none did within [`PATIENCE`].
async fn served(server: &Server) -> Option<Client> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        let mut c = server.connect().await;
        if c.stream
            .write_all(b"GET /products/p1 HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .is_ok()
            && c.read_reply().await.is_some_and(|r| r.status == 200)
        {
            return Some(c);
        }
        tokio::task::yield_now().await;
    }
    None
}

#[tokio::test]
async fn requests_past_max_in_flight_get_a_503_at_once() {
    let server = Server::start(&["--max-in-flight", "1"]).await;
    // A request whose body has not all arrived holds the one slot.
    let mut slow = server.connect().await;
    let body = r#"{"name":"Held"}"#;
    let head = format!(
        "PUT /products/p1 HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.stream.write_all(head.as_bytes()).await.unwrap();
    slow.stream.write_all(&body.as_bytes()[..3]).await.unwrap();
    let mut c = server.connect().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let shed = loop {
        let r = c
            .request("GET /products/p2 HTTP/1.1\r\nhost: t\r\n\r\n")
            .await;
        if r.status == 503 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!((shed.status, shed.code()), (503, "overloaded"), "{shed:?}");
    assert_eq!(shed.header("retry-after"), Some("1"));
    slow.stream.write_all(&body.as_bytes()[3..]).await.unwrap();
    let r = slow.read_reply().await.unwrap();
    assert_eq!((r.status, &r.body["name"]), (200, &Value::from("Held")));
    // The slot is free again: served on the same connection that was shed.
    let r = c
        .request("GET /products/p2 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_past_max_connections_gets_a_503_and_is_closed() {
    let server = Server::start(&["--max-connections", "2"]).await;
    let first = served(&server).await.expect("a first connection");
    let _second = served(&server).await.expect("a second connection");
    let mut third = server.connect().await;
    third
        .stream
        .write_all(b"GET /products/p1 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let r = third.read_reply().await.expect("an answer, not a reset");
    assert_eq!((r.status, r.code()), (503, "overloaded"), "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(third.closed_within(PATIENCE).await);
    // Once one closes, a new connection is served.
    drop(first);
    assert!(served(&server).await.is_some(), "a freed place is taken");
    server.stop().await.unwrap();
}
