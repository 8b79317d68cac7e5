//! Device discovery over mDNS (`mindoo_replica::discover`) between two real
//! network stacks: two network namespaces joined by a veth pair, one device
//! in each. Each test builds its own pair (`ip netns`, iproute2), runs this
//! test binary again inside a namespace (`ip netns exec`, the ignored test
//! `namespaced_child`, told what to do by environment variables), and reads
//! what the children print. Nothing leaves the namespaces: the multicast
//! stays on the veth link.
//!
//! Needs root (to create namespaces and links) and `ip` from iproute2. A
//! missing prerequisite fails the test with the reason; it never skips.
//!
//! The children print the lines the `mindoo-replica discover` command is to
//! print (see tests/discovery/netns.sh):
//!   advertising <port> <node>
//!   found <addr>[,<addr>...] <node>
//!   stopped <node>

#![cfg(feature = "client")]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use mindoo_replica::discover;

/// What a child does; the other variables are its arguments.
const ROLE: &str = "MINDOO_DISCOVERY_CHILD";
const SERVICE: &str = "MINDOO_DISCOVERY_SERVICE";
const NODE: &str = "MINDOO_DISCOVERY_NODE";
const PORT: &str = "MINDOO_DISCOVERY_PORT";
const WAIT_MS: &str = "MINDOO_DISCOVERY_WAIT_MS";
const EXCEPT: &str = "MINDOO_DISCOVERY_EXCEPT";

/// A node name that needs escaping in DNS and is not ASCII.
const DEVICE_A: &str = "Ada's laptop (ä)";
const DEVICE_B: &str = "phone-b";
const SYNC_PORT: u16 = 7700;
/// Another, well-formed service type: a browser for it must find nothing.
const OTHER_SERVICE: &str = "_mindoo-other._tcp.local.";
/// How long a browse listens. The advertiser probes for about 0.75 s before
/// it announces; the browser queries at once and again after 1 s.
const BROWSE_MS: u64 = 3000;

/// Namespaces are named `mdisc-<pid>-<test>-{a,b}`.
const PREFIX: &str = "mdisc-";

// The children.

#[test]
#[ignore = "the child the other tests run inside a namespace; does nothing on its own"]
fn namespaced_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match role.as_str() {
            "advertise" => advertise_until_terminated(&var(SERVICE), &var(NODE), &var(PORT)).await,
            "browse" => {
                let except = std::env::var(EXCEPT).ok();
                let wait = Duration::from_millis(var(WAIT_MS).parse().unwrap());
                let found = discover::browse_service(&var(SERVICE), wait, except.as_deref())
                    .await
                    .expect("browse");
                for device in &found {
                    println!("{}", found_line(device));
                }
                println!("browsed {}", found.len());
            }
            "self" => finds_itself(&var(NODE)).await,
            "watch" => watch_for_goodbye(&var(SERVICE), &var(NODE), &var(WAIT_MS)).await,
            other => panic!("unknown role {other}"),
        }
    });
}

fn found_line(device: &discover::Found) -> String {
    let addresses: Vec<String> = device.addresses.iter().map(ToString::to_string).collect();
    format!("found {} {}", addresses.join(","), device.node)
}

/// Announces until SIGTERM or SIGINT, then stops as a dropped advertisement does.
async fn advertise_until_terminated(service: &str, node: &str, port: &str) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).unwrap();
    let mut int = signal(SignalKind::interrupt()).unwrap();
    let advertisement =
        discover::advertise_service(service, node, port.parse().unwrap()).expect("advertise");
    println!("advertising {port} {node}");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    advertisement.stop().expect("stop advertising");
    println!("stopped {node}");
}

/// Advertising and browsing in one process: it finds itself (the multicast
/// loops back on the veth), unless told to leave itself out.
async fn finds_itself(node: &str) {
    let advertisement = discover::advertise(node, SYNC_PORT).expect("advertise");
    let wait = Duration::from_millis(BROWSE_MS);
    let (with_self, without_self) = tokio::join!(
        discover::browse(wait, None),
        discover::browse(wait, Some(node))
    );
    let with_self = with_self.expect("browse");
    let without_self = without_self.expect("browse");
    for device in &with_self {
        println!("{}", found_line(device));
    }
    assert_eq!(
        with_self
            .iter()
            .map(|f| f.node.as_str())
            .collect::<Vec<_>>(),
        [node],
        "{with_self:?}"
    );
    assert!(
        without_self.is_empty(),
        "except_node did not leave this device out: {without_self:?}"
    );
    assert!(with_self[0].addresses[0].ip().is_ipv4());
    drop(advertisement);
    println!("self ok");
}

/// With mdns-sd itself (the library under `discover`): prints `resolved` when
/// `node` is resolved and `removed` when it goes away, which after a goodbye
/// takes about a second, and without one the records' TTL (minutes).
async fn watch_for_goodbye(service: &str, node: &str, wait_ms: &str) {
    use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms.parse().unwrap());
    let daemon = ServiceDaemon::new().unwrap();
    daemon
        .disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
        .unwrap();
    let events = daemon.browse(service).unwrap();
    let mut fullname = None;
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv_async()).await {
        match event {
            ServiceEvent::ServiceResolved(service)
                if fullname.is_none()
                    && service.get_property_val_str(discover::NODE_PROPERTY) == Some(node) =>
            {
                println!("resolved {}", service.get_fullname());
                fullname = Some(service.get_fullname().to_lowercase());
            }
            ServiceEvent::ServiceRemoved(_, name) if Some(name.to_lowercase()) == fullname => {
                println!("removed {name}");
                break;
            }
            _ => {}
        }
    }
    let _ = daemon.shutdown();
}

// The tests.

/// The real service type: device A is found from B, by its node name, at an
/// IPv4 address in B's subnet first, then its IPv6 ones; B does not list
/// itself; a browser for another service type finds nothing.
#[test]
fn finds_a_device_in_another_namespace() {
    let hosts = Hosts::new("find");
    let mut advertiser = hosts.a.spawn(&[
        (ROLE, "advertise"),
        (SERVICE, discover::SERVICE_TYPE),
        (NODE, DEVICE_A),
        (PORT, &SYNC_PORT.to_string()),
    ]);
    advertiser.expect_line("advertising ", Duration::from_secs(10));
    // B announces itself too, and browses leaving itself out.
    let mut advertiser_b = hosts.b.spawn(&[
        (ROLE, "advertise"),
        (SERVICE, discover::SERVICE_TYPE),
        (NODE, DEVICE_B),
        (PORT, &SYNC_PORT.to_string()),
    ]);
    advertiser_b.expect_line("advertising ", Duration::from_secs(10));
    let started = Instant::now();
    let browse = |service: &str| {
        hosts.b.spawn(&[
            (ROLE, "browse"),
            (SERVICE, service),
            (WAIT_MS, &BROWSE_MS.to_string()),
            (EXCEPT, DEVICE_B),
        ])
    };
    let browser = browse(discover::SERVICE_TYPE);
    let other = browse(OTHER_SERVICE);
    let found = browser.finish_ok(Duration::from_secs(15));
    let found_other = other.finish_ok(Duration::from_secs(15));
    eprintln!("browsed in {:?}", started.elapsed());

    let devices = found_devices(&found);
    assert_eq!(
        devices
            .iter()
            .map(|(node, _)| node.as_str())
            .collect::<Vec<_>>(),
        [DEVICE_A],
        "B should find exactly device A, by its node name; B printed:\n{}",
        found.join("\n")
    );
    let addresses = &devices[0].1;
    let first = addresses[0];
    assert_eq!(
        first,
        SocketAddr::new(hosts.a.ipv4, SYNC_PORT),
        "the first address is A's IPv4 one: {addresses:?}"
    );
    assert!(
        hosts.b.same_subnet(first.ip()),
        "{first} is not in B's subnet"
    );
    assert!(
        addresses.contains(&SocketAddr::new(hosts.a.ipv6, SYNC_PORT)),
        "A's IPv6 address is listed too: {addresses:?}"
    );
    let v4_then_v6 = addresses
        .windows(2)
        .all(|w| w[0].is_ipv4() || w[1].is_ipv6());
    assert!(v4_then_v6, "IPv4 before IPv6: {addresses:?}");
    for a in addresses {
        if let SocketAddr::V6(v6) = a
            && v6.ip().is_unicast_link_local()
        {
            assert_ne!(v6.scope_id(), 0, "link-local without its interface: {a}");
        }
    }
    assert!(
        found_devices(&found_other).is_empty(),
        "a browser for {OTHER_SERVICE} found something:\n{}",
        found_other.join("\n")
    );

    for mut advertiser in [advertiser, advertiser_b] {
        advertiser.terminate();
        let lines = advertiser.finish_ok(Duration::from_secs(10));
        assert!(lines.iter().any(|l| l.starts_with("stopped ")), "{lines:?}");
    }
}

/// Dropping the advertisement says goodbye: a browser that resolved it sees
/// it removed within a couple of seconds, not after the records' TTL.
#[test]
fn stopping_says_goodbye() {
    let hosts = Hosts::new("bye");
    let mut advertiser = hosts.a.spawn(&[
        (ROLE, "advertise"),
        (SERVICE, discover::SERVICE_TYPE),
        (NODE, DEVICE_A),
        (PORT, &SYNC_PORT.to_string()),
    ]);
    advertiser.expect_line("advertising ", Duration::from_secs(10));
    let mut watcher = hosts.b.spawn(&[
        (ROLE, "watch"),
        (SERVICE, discover::SERVICE_TYPE),
        (NODE, DEVICE_A),
        (WAIT_MS, "20000"),
    ]);
    watcher.expect_line("resolved ", Duration::from_secs(10));
    let stopped_at = Instant::now();
    advertiser.terminate();
    watcher.expect_line("removed ", Duration::from_secs(5));
    let took = stopped_at.elapsed();
    eprintln!("removed {took:?} after the advertiser was told to stop");
    assert!(took < Duration::from_secs(4), "removal took {took:?}");
    advertiser.finish_ok(Duration::from_secs(10));
    watcher.finish_ok(Duration::from_secs(10));
}

/// One process advertising and browsing finds itself, and `except_node`
/// leaves it out (the assertions run in the child).
#[test]
fn finds_itself_unless_excepted() {
    let hosts = Hosts::new("self");
    let lines = hosts
        .a
        .spawn(&[(ROLE, "self"), (NODE, DEVICE_A)])
        .finish_ok(Duration::from_secs(20));
    assert!(lines.iter().any(|l| l == "self ok"), "{lines:?}");
}

/// `(node, addresses)` from `found` lines.
fn found_devices(lines: &[String]) -> Vec<(String, Vec<SocketAddr>)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("found "))
        .map(|rest| {
            let (addresses, node) = rest.split_once(' ').expect("found <addrs> <node>");
            let addresses = addresses.split(',').map(|a| a.parse().unwrap()).collect();
            (node.to_string(), addresses)
        })
        .collect()
}

// The hosts.

/// Two namespaces, `a` and `b`, joined by a veth pair; deleted on drop.
struct Hosts {
    a: Host,
    b: Host,
}

struct Host {
    netns: String,
    ipv4: IpAddr,
    ipv6: IpAddr,
}

impl Hosts {
    fn new(test: &str) -> Self {
        static SUBNET: AtomicU8 = AtomicU8::new(1);
        remove_stale_namespaces();
        let net = SUBNET.fetch_add(1, Ordering::Relaxed);
        let host = |side: &str, last: u8| Host {
            netns: format!("{PREFIX}{}-{test}-{side}", std::process::id()),
            ipv4: format!("10.77.{net}.{last}").parse().unwrap(),
            ipv6: format!("fd77:0:0:{net}::{last}").parse().unwrap(),
        };
        let hosts = Self {
            a: host("a", 1),
            b: host("b", 2),
        };
        let (a, b) = (&hosts.a.netns, &hosts.b.netns);
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        ip(&[
            "link", "add", "veth-a", "netns", a, "type", "veth", "peer", "name", "veth-b", "netns",
            b,
        ]);
        for (host, dev) in [(&hosts.a, "veth-a"), (&hosts.b, "veth-b")] {
            let ns = host.netns.as_str();
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.ipv4),
                "dev",
                dev,
            ]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/64", host.ipv6),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        // mDNS daemons take the interfaces that are up when they start (and
        // look again only every 5 s): start none before the link is up and
        // its link-local IPv6 address is usable.
        let deadline = Instant::now() + Duration::from_secs(10);
        for (host, dev) in [(&hosts.a, "veth-a"), (&hosts.b, "veth-b")] {
            let ns = host.netns.as_str();
            loop {
                let link = ip_out(&["-n", ns, "-o", "link", "show", "dev", dev]);
                let tentative = ip_out(&[
                    "-n",
                    ns,
                    "-o",
                    "-6",
                    "addr",
                    "show",
                    "dev",
                    dev,
                    "tentative",
                ]);
                if link.contains("state UP") && tentative.trim().is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{dev} in {ns} is not up after 10 s: {link} {tentative}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        hosts
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so both.
        for ns in [&self.a.netns, &self.b.netns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Host {
    fn same_subnet(&self, ip: IpAddr) -> bool {
        match (self.ipv4, ip) {
            (IpAddr::V4(mine), IpAddr::V4(theirs)) => mine.octets()[..3] == theirs.octets()[..3],
            _ => false,
        }
    }

    /// This test binary's `namespaced_child` in this namespace, with `env`.
    fn spawn(&self, env: &[(&str, &str)]) -> Proc {
        let exe = std::env::current_exe().unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.netns])
            .arg(exe)
            .args(["--exact", "namespaced_child", "--ignored", "--nocapture"])
            .args(["--test-threads=1", "-q"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let role = env
            .iter()
            .find(|(n, _)| *n == ROLE)
            .map_or("?", |(_, v)| *v);
        Proc::start(command, format!("{role} in {}", self.netns))
    }
}

/// Runs `ip ARGS`, failing the test with what is missing if it cannot.
fn ip(args: &[&str]) {
    ip_out(args);
}

/// Runs `ip ARGS` as [`ip`] does, and returns what it printed.
fn ip_out(args: &[&str]) -> String {
    let out = match Command::new("ip").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "PREREQUISITE MISSING: cannot run `ip` ({e}). These tests need iproute2 \
             (apt-get install iproute2) and root."
        ),
    };
    assert!(
        out.status.success(),
        "PREREQUISITE MISSING? `ip {}` failed: {}These tests need root (CAP_SYS_ADMIN and \
         CAP_NET_ADMIN, to create network namespaces and veth links), a kernel with veth and \
         IPv6, and iproute2.",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces left by a run that was killed before it could delete them.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

// The child processes.

/// A child, its stdout lines as they come, and everything it printed.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn start(mut command: Command, name: String) -> Self {
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "PREREQUISITE MISSING: cannot run `ip netns exec` ({e}): apt-get install iproute2"
            )
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out_log.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let err_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                err_log.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        Self {
            name,
            child,
            lines,
            log,
        }
    }

    fn printed(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for a stdout line starting with `prefix`.
    fn expect_line(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{}: no line {prefix:?} within {within:?} (exit status: {status:?}); \
                         it printed:\n{}",
                        self.name,
                        self.printed()
                    );
                }
            }
        }
    }

    /// Asks the child to stop (SIGTERM), as a service manager would.
    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &pid])
            .status()
            .expect("sh");
        assert!(status.success(), "kill -TERM {pid} ({})", self.name);
    }

    /// Waits for the child to exit successfully; returns its stdout lines.
    fn finish_ok(mut self, within: Duration) -> Vec<String> {
        let status = self.wait(within);
        // The readers end with the child's pipes; give them a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&self.log) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            status.success(),
            "{} failed ({status}); it printed:\n{}",
            self.name,
            self.printed()
        );
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.starts_with("stderr: "))
            .cloned()
            .collect()
    }

    fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {within:?}; it printed:\n{}",
                    self.name,
                    self.printed()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
