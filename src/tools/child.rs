//! Replica processes on this machine, for the demo, benchmarks and tests: a
//! child `mindoo-replica serve` configured through environment variables,
//! the way a container is, which reports its bound addresses on stdout
//! (see [`crate::server::ready_line`]).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::task::AbortOnDropHandle;

#[cfg(test)]
use crate::server::ready_line;
use crate::server::{LISTEN_FDS_ENV, READY_PREFIX};

/// The descriptors process `pid` has open (0 once it has exited).
pub fn open_files_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Sockets bound by a parent for a child replica.
pub struct ChildListeners {
    pub grpc: std::net::TcpListener,
    pub metrics: Option<std::net::TcpListener>,
}

impl ChildListeners {
    /// Binds both on ephemeral loopback ports.
    pub fn bind_loopback() -> std::io::Result<Self> {
        Self::bind("127.0.0.1:0", Some("127.0.0.1:0"))
    }

    pub fn bind(grpc: &str, metrics: Option<&str>) -> std::io::Result<Self> {
        Ok(Self {
            grpc: std::net::TcpListener::bind(grpc)?,
            metrics: metrics.map(std::net::TcpListener::bind).transpose()?,
        })
    }

    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }
}

fn set_inheritable(fd: std::os::fd::RawFd, inheritable: bool) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with valid commands.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = match inheritable {
            true => flags & !libc::FD_CLOEXEC,
            false => flags | libc::FD_CLOEXEC,
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `exe` listening on ephemeral loopback ports it picks itself.
fn on_ephemeral_ports(exe: &Path, metrics: bool) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env("MINDOO_REPLICA__SERVER__LISTEN", "127.0.0.1:0")
        .env(
            "MINDOO_REPLICA__SERVER__METRICS_LISTEN",
            if metrics { "127.0.0.1:0" } else { "" },
        );
    cmd
}

/// A running child replica. Killed (SIGKILL) if dropped while still running.
pub struct ReplicaProcess {
    child: Child,
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
    _stdout: AbortOnDropHandle<()>,
}

impl ReplicaProcess {
    /// Starts `exe serve` on an ephemeral port with its RocksDB in `data_dir`,
    /// plus any extra `MINDOO_REPLICA__…` overrides, and waits until it listens.
    pub async fn spawn(
        exe: &Path,
        data_dir: &Path,
        metrics: bool,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = on_ephemeral_ports(exe, metrics);
        cmd.arg("serve");
        Self::start(cmd, data_dir, extra_env, None).await
    }

    /// Like [`Self::spawn`] (with metrics), in a process whose open-files
    /// limit, soft and hard, is `open_files`.
    pub async fn spawn_with_open_files(
        exe: &Path,
        data_dir: &Path,
        open_files: u64,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = on_ephemeral_ports(exe, true);
        let limit = libc::rlimit {
            rlim_cur: open_files,
            rlim_max: open_files,
        };
        // SAFETY: setrlimit is async-signal-safe and only reads `limit`.
        unsafe {
            cmd.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        cmd.arg("serve");
        Self::start(cmd, data_dir, extra_env, None).await
    }

    /// Starts `exe serve` on sockets the caller has bound.
    pub async fn spawn_on(
        exe: &Path,
        data_dir: &Path,
        listeners: ChildListeners,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("serve");
        Self::start(cmd, data_dir, extra_env, Some(listeners)).await
    }

    /// Starts `exe serve --client-home HOME` on sockets the caller has
    /// bound: a device serving its own store.
    pub async fn spawn_device(
        exe: &Path,
        home: &Path,
        listeners: ChildListeners,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("serve").arg("--client-home").arg(home);
        Self::start(cmd, home, &[], Some(listeners)).await
    }

    async fn start(
        mut cmd: Command,
        data_dir: &Path,
        extra_env: &[(&str, &str)],
        listeners: Option<ChildListeners>,
    ) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        cmd.env("MINDOO_REPLICA__STORAGE__PATH", data_dir)
            .env("MINDOO_REPLICA__LOG__FILTER", "warn")
            .env("MINDOO_REPLICA__SERVER__SHUTDOWN_DELAY_MS", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // Benchmarks' and tests' replicas, started without a config file,
        // let unsigned clients in (said explicitly, as the replica asks);
        // `extra_env` may ask for client authentication.
        if !extra_env.iter().any(|(k, _)| *k == "MINDOO_REPLICA_CONFIG") {
            cmd.env("MINDOO_REPLICA__AUTH__CLIENTS", "off");
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let fds: Vec<_> = listeners
            .iter()
            .flat_map(|l| std::iter::once(&l.grpc).chain(l.metrics.as_ref()))
            .map(|l| l.as_raw_fd())
            .collect();
        if let Some(l) = &listeners {
            let metrics = l
                .metrics
                .as_ref()
                .map_or_else(|| "-".to_owned(), |m| m.as_raw_fd().to_string());
            cmd.env(LISTEN_FDS_ENV, format!("{},{metrics}", l.grpc.as_raw_fd()));
        }
        // Only this child inherits these sockets: they are inheritable just
        // for the duration of the (synchronous) spawn.
        for &fd in &fds {
            set_inheritable(fd, true)?;
        }
        let spawned = cmd.spawn();
        for &fd in &fds {
            set_inheritable(fd, false)?;
        }
        drop(listeners);
        let mut child = spawned.context("starting the replica process")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .context("replica did not start within 60 s")??;
        let Some(line) = line else {
            let status = child.wait().await?;
            bail!("replica exited before listening ({status})");
        };
        let (grpc, metrics) = parse_ready(&line)
            .with_context(|| format!("unexpected first line from the replica: {line:?}"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            grpc,
            metrics,
            _stdout: AbortOnDropHandle::new(drain),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident and peak resident memory of the process, in bytes.
    /// The descriptors the process has open (0 once it has exited).
    pub fn open_files(&self) -> usize {
        self.pid().map_or(0, open_files_of)
    }

    pub fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
                .map(|kb| kb * 1024)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with a pid we own and a valid signal number.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }

    /// Sends SIGTERM and waits for a graceful exit.
    pub async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.terminate();
        Ok(self.child.wait().await?)
    }

    /// SIGKILL, no goodbye.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// A plain HTTP/1.0 GET against a local endpoint (such as `/metrics`); returns the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    anyhow::ensure!(
        head.contains(" 200 "),
        "GET {path}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

fn parse_ready(line: &str) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let rest = line.strip_prefix(READY_PREFIX)?;
    let mut grpc = None;
    let mut metrics = None;
    for part in rest.split_whitespace() {
        match part.split_once('=')? {
            ("grpc", v) => grpc = Some(v.parse().ok()?),
            ("metrics", "off") => {}
            ("metrics", v) => metrics = Some(v.parse().ok()?),
            _ => {}
        }
    }
    Some((grpc?, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let g: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let m: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert_eq!(parse_ready(&ready_line(g, Some(m))), Some((g, Some(m))));
        assert_eq!(parse_ready(&ready_line(g, None)), Some((g, None)));
        assert_eq!(parse_ready("hello"), None);
    }
}
