//! A real cluster on loopback for the tests: etcd (Debian's `etcd-server`), coordinators and
//! executors as separate OS processes, each logging to a file in the workspace.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::{Ca, Issued};
use crate::{Invocation, Workspace, binary, medallion_bin};

/// Lease TTL of the test cluster: failover and executor loss show within seconds.
pub const LEASE_TTL_SECONDS: u64 = 2;

/// A free port on loopback, for a server a test starts, never handed out twice.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`): a port the kernel picks
/// for `bind(0)` is also what it gives outgoing connections, so between this function and the
/// server's own `bind` a client of another test could take it, and the server would not
/// start (seen in CI: a coordinator that never listened). Ports below the range are only
/// ever taken by binding them by number, which the tests do through here.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOWEST: u16 = 10_000;
    if ephemeral <= LOWEST + 1_000 {
        // No room below the range: let the kernel choose.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
    }
    let span = ephemeral - LOWEST;
    let mut next = NEXT.lock().expect("ports");
    // Each test process starts at its own place, so two at once rarely meet.
    let mut port = next.unwrap_or(LOWEST + (std::process::id() % u32::from(span)) as u16);
    for _ in 0..span {
        let candidate = port;
        port = if port + 1 >= ephemeral {
            LOWEST
        } else {
            port + 1
        };
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            *next = Some(port);
            return candidate;
        }
    }
    panic!("no free port between {LOWEST} and {ephemeral}")
}

/// Polls `ready` every 100 ms until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process of the cluster, killed when dropped.
pub struct Proc {
    pub name: String,
    pub port: u16,
    /// Where it serves Prometheus metrics (coordinators and executors).
    pub metrics_port: u16,
    /// Where a coordinator serves the web UI.
    pub ui_port: u16,
    pub log: PathBuf,
    /// `https` when it serves TLS.
    pub scheme: &'static str,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, port: u16, log: PathBuf, command: &mut Command) -> Self {
        let out = File::create(&log).expect("log file");
        let child = command
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name: name.to_string(),
            port,
            metrics_port: 0,
            ui_port: 0,
            log,
            scheme: "http",
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The web UI of a coordinator (HTTPS when it serves TLS).
    pub fn ui_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.ui_port)
    }

    /// Sends a signal by name: `STOP` freezes the process (it misses its etcd keep-alives
    /// while still alive), `CONT` wakes it.
    pub fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let sent = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(child.id().to_string())
                .status()
                .expect("run kill");
            assert!(sent.success(), "kill -{name} {}", self.name);
        }
    }

    /// SIGKILL: no cleanup of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn listening(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The one name the certificate of a secured cluster's servers has.
pub const NODE_NAME: &str = "medallion-node";

/// etcd on a free port with its data in the workspace.
pub struct Etcd {
    pub proc: Proc,
    peer_port: u16,
    data: PathBuf,
    tls: Option<EtcdTls>,
}

/// etcd serving TLS with `cert`, and taking only clients with a certificate `ca` signed.
#[derive(Clone)]
struct EtcdTls {
    cert: Issued,
    ca: PathBuf,
}

impl Etcd {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, None)
    }

    fn start_with(dir: &Path, tls: Option<EtcdTls>) -> Self {
        let data = dir.join("etcd-data");
        let (port, peer_port) = (free_port(), free_port());
        let proc = Self::spawn(dir, &data, port, peer_port, tls.as_ref());
        Self {
            proc,
            peer_port,
            data,
            tls,
        }
    }

    fn spawn(dir: &Path, data: &Path, port: u16, peer_port: u16, tls: Option<&EtcdTls>) -> Proc {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new("etcd");
        if let Some(tls) = tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert.cert)
                .arg("--key-file")
                .arg(&tls.cert.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let mut proc = Proc::spawn(
            "etcd",
            port,
            dir.join("etcd.log"),
            command
                .args(["--name", "test", "--data-dir"])
                .arg(data)
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args(["--initial-cluster", &format!("test={peer}")]),
        );
        proc.scheme = scheme;
        wait_for("etcd", Duration::from_secs(20), || proc.listening());
        proc
    }

    pub fn url(&self) -> String {
        self.proc.url()
    }

    /// Kills etcd and starts it again on the same ports and data.
    pub fn restart(&mut self, down: Duration) {
        self.proc.kill();
        std::thread::sleep(down);
        let dir = self.data.parent().expect("workspace").to_path_buf();
        let tls = self.tls.clone();
        self.proc = Self::spawn(
            &dir,
            &self.data,
            self.proc.port,
            self.peer_port,
            tls.as_ref(),
        );
    }
}

/// etcd, coordinators and executors of one test.
pub struct Cluster {
    pub etcd: Etcd,
    pub coordinators: Vec<Proc>,
    pub executors: Vec<Proc>,
    coordinator_flags: Vec<String>,
    /// The workspace's environment ([`Workspace::set_env`]), for every process.
    env: Vec<(String, String)>,
    dir: PathBuf,
    /// `https` when the servers serve TLS.
    scheme: &'static str,
}

impl Cluster {
    /// Starts etcd, `coordinators` coordinators (the first one leads) and `executors`
    /// executors, and waits until the leader sees every executor.
    pub fn start(ws: &Workspace, coordinators: usize, executors: usize) -> Self {
        Self::start_with(ws, coordinators, executors, &[])
    }

    /// [`Cluster::start`], with extra flags for the coordinators.
    pub fn start_with(
        ws: &Workspace,
        coordinators: usize,
        executors: usize,
        coordinator_flags: &[&str],
    ) -> Self {
        Self::start_on(
            Etcd::start(ws.path()),
            ws,
            coordinators,
            executors,
            coordinator_flags,
        )
    }

    /// [`Cluster::start`] with TLS on every link: etcd, coordinators and executors serve TLS
    /// with certificates `ca` signs and take only callers that present one (mutual TLS); every
    /// process, the client included, trusts `ca` and presents `<ca dir>/node.pem`. As pods
    /// in Kubernetes, servers are called at IP addresses their certificate does not name: it
    /// names [`NODE_NAME`], which callers check instead. Returns the cluster and the
    /// certificate.
    pub fn start_secured(
        ws: &Workspace,
        coordinators: usize,
        executors: usize,
        ca: &Ca,
    ) -> (Self, Issued) {
        let node = ca.issue("node", "node", &[NODE_NAME]);
        let etcd = EtcdTls {
            cert: ca.issue("etcd", "etcd", &["127.0.0.1"]),
            ca: ca.cert(),
        };
        let ca_path = ca.cert().display().to_string();
        for (key, value) in [
            ("MEDALLION_TLS_CERT", node.cert.display().to_string()),
            ("MEDALLION_TLS_KEY", node.key.display().to_string()),
            ("MEDALLION_TLS_CA", ca_path.clone()),
            ("MEDALLION_TLS_CLIENT_AUTH", "true".into()),
            ("MEDALLION_TLS_SERVER_NAME", NODE_NAME.into()),
            ("MEDALLION_ETCD_CERT", node.cert.display().to_string()),
            ("MEDALLION_ETCD_KEY", node.key.display().to_string()),
            ("MEDALLION_ETCD_CA", ca_path),
        ] {
            ws.set_env(key, &value);
        }
        let etcd = Etcd::start_with(ws.path(), Some(etcd));
        (Self::start_on(etcd, ws, coordinators, executors, &[]), node)
    }

    fn start_on(
        etcd: Etcd,
        ws: &Workspace,
        coordinators: usize,
        executors: usize,
        coordinator_flags: &[&str],
    ) -> Self {
        let dir = ws.path().to_path_buf();
        let env = ws.env();
        let mut cluster = Self {
            scheme: if env.iter().any(|(k, _)| k == "MEDALLION_TLS_CERT") {
                "https"
            } else {
                "http"
            },
            etcd,
            coordinators: Vec::new(),
            executors: Vec::new(),
            coordinator_flags: coordinator_flags.iter().map(|f| f.to_string()).collect(),
            env,
            dir,
        };
        for i in 0..coordinators {
            cluster.add_coordinator();
            if i == 0 {
                wait_for("a leader", Duration::from_secs(30), || {
                    cluster.coordinators[0]
                        .log_text()
                        .contains("elected leader")
                });
            }
        }
        for _ in 0..executors {
            cluster.add_executor();
        }
        let expected = executors;
        wait_for("executors to register", Duration::from_secs(30), || {
            cluster.executor_ids(ws).len() == expected
        });
        cluster
    }

    pub fn add_coordinator(&mut self) {
        let port = free_port();
        let metrics_port = free_port();
        let ui_port = free_port();
        let name = format!("coordinator-{}", self.coordinators.len());
        let mut proc = Proc::spawn(
            &name,
            port,
            self.dir.join(format!("{name}.log")),
            Command::new(binary("medallion-coordinator"))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--etcd", &self.etcd.url(), "--etcd-prefix", "/test"])
                .args(["--lease-ttl", &LEASE_TTL_SECONDS.to_string()])
                .args(["--ballista-port", &free_port().to_string()])
                .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
                .args(["--ui-listen", &format!("127.0.0.1:{ui_port}")])
                .args(&self.coordinator_flags)
                // Specs' relative paths are the workspace's, as the client's are.
                .env("MEDALLION_ROOT", &self.dir)
                .envs(self.env.clone())
                .env("MEDALLION_LOG", "info"),
        );
        proc.metrics_port = metrics_port;
        proc.ui_port = ui_port;
        proc.scheme = self.scheme;
        wait_for(&name, Duration::from_secs(30), || proc.listening());
        self.coordinators.push(proc);
    }

    pub fn add_executor(&mut self) {
        self.add_executor_with(&[]);
    }

    /// [`Cluster::add_executor`], with extra flags for the executor. Returns its URL.
    pub fn add_executor_with(&mut self, flags: &[&str]) -> String {
        let port = free_port();
        let metrics_port = free_port();
        let name = format!("executor-{}", self.executors.len());
        let mut proc = Proc::spawn(
            &name,
            port,
            self.dir.join(format!("{name}.log")),
            Command::new(binary("medallion-executor"))
                .args(["--listen", &format!("127.0.0.1:{port}"), "--id", &name])
                .args(["--etcd", &self.etcd.url(), "--etcd-prefix", "/test"])
                .args([
                    "--lease-ttl",
                    &LEASE_TTL_SECONDS.to_string(),
                    "--slots",
                    "2",
                ])
                .args(["--ballista-port", &free_port().to_string()])
                .args(["--ballista-grpc-port", &free_port().to_string()])
                .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
                .args(flags)
                .envs(self.env.clone())
                // Ballista's executor says which tasks of a distributed query it ran.
                .env(
                    "MEDALLION_LOG",
                    "warn,medallion_executor=info,medallion_cluster=info,ballista_executor=info",
                ),
        );
        proc.metrics_port = metrics_port;
        proc.scheme = self.scheme;
        let url = proc.url();
        self.executors.push(proc);
        url
    }

    /// Every coordinator's URL, for `--coordinator`.
    pub fn coordinator_urls(&self) -> String {
        self.coordinators
            .iter()
            .map(Proc::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs the `medallion` client against this cluster, in the workspace.
    pub fn client(&self, ws: &Workspace, args: &[&str]) -> Invocation {
        self.client_at(&self.coordinator_urls(), ws, args)
    }

    /// Runs the `medallion` client against the coordinators at `urls` only.
    pub fn client_at(&self, urls: &str, ws: &Workspace, args: &[&str]) -> Invocation {
        self.client_without(urls, &[], ws, args)
    }

    /// [`Cluster::client_at`], without the workspace's variables `removed`.
    pub fn client_without(
        &self,
        urls: &str,
        removed: &[&str],
        ws: &Workspace,
        args: &[&str],
    ) -> Invocation {
        let env = self
            .env
            .iter()
            .filter(|(k, _)| !removed.contains(&k.as_str()));
        let mut command = Command::new(medallion_bin());
        command
            .args(args)
            .current_dir(ws.path())
            .envs(env.cloned())
            .env("MEDALLION_COORDINATOR", urls)
            .env("MEDALLION_LOG", "warn");
        let out = crate::output_within(&mut command, crate::COMMAND_LIMIT).unwrap_or_else(|out| {
            panic!(
                "`medallion {}` was still running after {:?}; it printed:\n{}\n{}\n{}",
                args.join(" "),
                crate::COMMAND_LIMIT,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            )
        });
        Invocation::from(out)
    }

    /// The ids of the executors the leader lists.
    pub fn executor_ids(&self, ws: &Workspace) -> Vec<String> {
        let out = self.client(ws, &["executors", "--output", "json"]);
        if out.code != 0 {
            return Vec::new();
        }
        let listed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        listed
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Submits a spec without waiting; returns the run id.
    pub fn submit(&self, ws: &Workspace, spec: &str) -> String {
        let out = self.client(ws, &["submit", spec]);
        assert_eq!(out.code, 0, "submit failed: {}", out.stderr);
        out.stdout.trim().to_string()
    }

    /// The run as `status --output json` shows it.
    pub fn status(&self, ws: &Workspace, run_id: &str) -> serde_json::Value {
        let out = self.client(ws, &["status", run_id, "--output", "json"]);
        serde_json::from_str(&out.stdout).unwrap_or_default()
    }

    /// Follows the run to its end (`watch`, which follows a new leader); returns its status.
    pub fn wait(&self, ws: &Workspace, run_id: &str) -> serde_json::Value {
        let out = self.client(ws, &["watch", run_id, "--output", "json"]);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            let logs = self.logs();
            panic!(
                "watch gave no JSON ({e}): {}\n{}\n{logs}",
                out.stdout, out.stderr
            )
        })
    }

    /// Follows a run that had an executor killed under one of its tasks to its end: it must
    /// have succeeded, and the coordinator must have seen the task lost (else the kill missed
    /// it). Its status.
    pub fn wait_after_lost_task(&self, ws: &Workspace, run_id: &str) -> serde_json::Value {
        let status = self.wait(ws, run_id);
        assert_eq!(status["state"], "succeeded", "{status:#}\n{}", self.logs());
        assert!(
            self.coordinators[0]
                .log_text()
                .contains("executor lost under a running task"),
            "no task was running on the killed executor:\n{}",
            self.logs()
        );
        status
    }

    /// The index of the coordinator that leads now.
    pub fn leader(&self) -> usize {
        let newest = |p: &Proc| p.log_text().matches("elected leader").count();
        self.coordinators
            .iter()
            .position(|p| newest(p) > 0 && p.child.is_some())
            .expect("a leader")
    }

    /// Waits until an executor's log shows a task of `table` running; returns that executor.
    pub fn executor_running(&self, table: &str) -> usize {
        // Executors log JSON lines (their stderr is not a terminal).
        let needle = format!("\"table\":\"{table}\"");
        let mut found = None;
        wait_for(
            &format!("a task of {table}"),
            Duration::from_secs(120),
            || {
                found = self.executors.iter().position(|e| {
                    e.log_text()
                        .lines()
                        .any(|l| l.contains("task started") && l.contains(&needle))
                });
                found.is_some()
            },
        );
        found.expect("an executor")
    }

    /// Every process's log, for a failing assertion's message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for p in self.coordinators.iter().chain(&self.executors) {
            let text = p.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            all += &format!("--- {} (last lines)\n", p.name);
            for line in tail.into_iter().rev() {
                all += line;
                all.push('\n');
            }
        }
        all
    }
}
