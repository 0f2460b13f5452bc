//! Private `redis-server`s and Redis Clusters, killed on drop.

use crate::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A `redis-server` of our own (never the shared one), in a temporary directory, killed on
/// drop.
pub struct TestRedis {
    child: Option<Child>,
    /// The port it listens on (its TLS port for a TLS-only server).
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    tls: bool,
}

impl TestRedis {
    /// Starts a server without persistence on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server on a given port.
    pub fn start_on(port: u16) -> Self {
        let mut r = Self::start_with(&[]);
        r.kill();
        r.port = port;
        r.spawn();
        r
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let mut r = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls: false,
        };
        r.spawn();
        r
    }

    /// Starts a TLS-only server whose certificate (for `127.0.0.1`) is signed by a private CA
    /// made by `openssl` for it alone: clients must trust [`TestRedis::ca_file`].
    pub fn start_tls() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| {
            let ok = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "openssl {args:?} failed");
        };
        // The CA: a self-signed certificate with CA:TRUE (openssl's v3_ca defaults).
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=aside test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        // The server's key and certificate, for the IP address clients connect to.
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            path("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ]);
        let (cert, key, ca) = (path("cert.pem"), path("key.pem"), path("ca.pem"));
        let port = free_port();
        let mut r = Self {
            child: None,
            port,
            dir,
            extra: vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-ca-cert-file".into(),
                ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            tls: true,
        };
        r.spawn();
        r
    }

    /// The PEM file of the private CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        if !self.tls {
            cmd.args(["--port", &self.port.to_string()]);
        }
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("redis-server must be installed"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                panic!("redis-server did not start on {}:\n{log}", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its URL: `redis://127.0.0.1:PORT/`, or `rediss://127.0.0.1:PORT/` for a TLS server
    /// (whose certificate only [`TestRedis::ca_file`] vouches for).
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://127.0.0.1:{}/", self.port)
        } else {
            format!("redis://127.0.0.1:{}/", self.port)
        }
    }

    /// A plain connection for inspecting what the engine wrote (over TLS, trusting the
    /// private CA, for a TLS server).
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = if self.tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(self.ca_file()).unwrap()),
            };
            redis::Client::build_with_tls(self.url(), certs)
        } else {
            redis::Client::open(self.url())
        };
        client
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGSTOP: the server keeps its connections and answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL, and wait for the process to go.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// Three `redis-server` masters in cluster mode on loopback, holding every slot between them.
pub struct TestCluster {
    /// The three nodes, each a master.
    pub nodes: Vec<TestRedis>,
    /// What `redis-cli` needs to log in (`--user`, `--pass`), if the nodes require it.
    login: Vec<String>,
}

impl TestCluster {
    /// Starts three nodes, joins them with `redis-cli --cluster create`, and waits until every
    /// node says the cluster is ok.
    pub fn start() -> Self {
        Self::start_on([free_port(), free_port(), free_port()])
    }

    /// Starts the three nodes on given ports.
    pub fn start_on(ports: [u16; 3]) -> Self {
        Self::start_with(ports, &[], &[])
    }

    /// Starts the three nodes with extra `redis-server` arguments, `login` being what
    /// `redis-cli` then needs to log in.
    pub fn start_with(ports: [u16; 3], extra: &[&str], login: &[&str]) -> Self {
        let nodes: Vec<TestRedis> = ports
            .into_iter()
            .map(|port| {
                let dir = tempfile::tempdir().unwrap();
                let bus = std::iter::repeat_with(free_port)
                    .find(|p| !ports.contains(p))
                    .unwrap();
                let conf = dir.path().join(format!("nodes-{port}.conf"));
                let mut r = TestRedis {
                    child: None,
                    port,
                    dir,
                    extra: [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf.display().to_string(),
                        "--cluster-port",
                        &bus.to_string(),
                    ]
                    .iter()
                    .chain(extra)
                    .map(|s| s.to_string())
                    .collect(),
                    tls: false,
                };
                r.spawn();
                r
            })
            .collect();
        let login: Vec<String> = login.iter().map(|s| s.to_string()).collect();
        let out = Command::new("redis-cli")
            .args(&login)
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Self { nodes, login };
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &c.nodes {
            while !c
                .cli(n.port, &["cluster", "info"])
                .contains("cluster_state:ok")
            {
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not become ok on {}",
                    n.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        c
    }

    /// One cluster shared by the tests that run at the same time (each in its own namespace),
    /// killed when the last of them drops it.
    pub fn shared() -> Arc<Self> {
        static SHARED: Mutex<Weak<TestCluster>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.upgrade() {
            return c;
        }
        let c = Arc::new(Self::start());
        *slot = Arc::downgrade(&c);
        c
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(&self.login)
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The URLs of the nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(TestRedis::url).collect()
    }

    /// The hash slot of a key.
    pub fn slot(&self, key: &str) -> u16 {
        self.cli(self.nodes[0].port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap()
    }

    /// The index in `nodes` of the node serving a key.
    pub fn node_of(&self, key: &str) -> usize {
        let slot = self.slot(key);
        let table = self.cli(self.nodes[0].port, &["cluster", "nodes"]);
        for line in table.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port: u16 = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            let serves = f[8..].iter().any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            });
            if serves {
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no node serves slot {slot}:\n{table}")
    }

    /// Moves the slot of `key` to node `to` the way a resharding tool does: marks it
    /// importing and migrating, copies its keys over with `MIGRATE`, then hands it to `to`
    /// on every node. Returns the node it was on.
    pub fn move_slot_of(&self, key: &str, to: usize) -> usize {
        let (slot, from) = (self.slot(key).to_string(), self.node_of(key));
        assert_ne!(from, to, "{key} is on node {to} already");
        let (fp, tp) = (self.nodes[from].port, self.nodes[to].port);
        let id = |port| self.cli(port, &["cluster", "myid"]).trim().to_owned();
        let (from_id, to_id) = (id(fp), id(tp));
        let ok = |out: String| assert!(out.trim() == "OK" || out.trim() == "NOKEY", "{out}");
        ok(self.cli(tp, &["cluster", "setslot", &slot, "importing", &from_id]));
        ok(self.cli(fp, &["cluster", "setslot", &slot, "migrating", &to_id]));
        loop {
            let keys = self.cli(fp, &["cluster", "getkeysinslot", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = tp.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &port, "", "0", "5000"];
            args.extend(self.login_args());
            args.push("keys");
            args.extend(keys);
            ok(self.cli(fp, &args));
        }
        for n in &self.nodes {
            ok(self.cli(n.port, &["cluster", "setslot", &slot, "node", &to_id]));
        }
        from
    }

    /// What `MIGRATE` needs to log in to the target, if the nodes require it.
    fn login_args(&self) -> Vec<&str> {
        match self.login.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            [] => vec![],
            ["--user", user, "--pass", pass] => vec!["auth2", user, pass],
            ["--pass", pass] | ["-a", pass] => vec!["auth", pass],
            ref other => panic!("no MIGRATE login for {other:?}"),
        }
    }

    /// A cluster connection for inspecting what the engine wrote.
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }
}

/// A server a test can kill and start again, so that one outage scenario runs on a standalone
/// Redis and on one node of a cluster.
pub trait Server {
    /// Kills it (SIGKILL) and waits for the process to go.
    fn kill(&mut self);
    /// Starts it again where it was.
    fn restart(&mut self);
}

impl Server for TestRedis {
    fn kill(&mut self) {
        TestRedis::kill(self)
    }
    fn restart(&mut self) {
        TestRedis::restart(self)
    }
}

/// Node `.1` (an index in `nodes`) of cluster `.0`. It keeps its slots across a restart: its
/// cluster config survives in its directory.
pub struct Node<'a>(pub &'a mut TestCluster, pub usize);

impl Server for Node<'_> {
    fn kill(&mut self) {
        self.0.nodes[self.1].kill()
    }
    fn restart(&mut self) {
        self.0.nodes[self.1].restart()
    }
}
