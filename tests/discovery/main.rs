//! Device discovery over mDNS (`mindoo_replica::discover`) between two real
//! network stacks: two network namespaces joined by a veth pair, one device
//! in each. Each test builds its own pair (`ip netns`, iproute2), runs this
//! test binary again inside a namespace (`ip netns exec`, the ignored test
//! `namespaced_child`, told what to do by environment variables), and reads
//! what the children print. Nothing leaves the namespaces: the multicast
//! stays on the veth link.
//!
//! The product's flow runs the same way, with the command itself in each
//! namespace (`command_line`): one device serves its store and announces
//! it (`serve --client-home … --advertise`), the other lists it
//! (`discover`) and syncs with it (`sync --discover`) both ways.
//! tests/discovery/netns.sh runs that flow by hand, for someone with the
//! binary and without cargo.
//!
//! Needs root (to create namespaces and links) and `ip` from iproute2. A
//! missing prerequisite fails the test with the reason; it never skips.
//!
//! The children print lines as the `mindoo-replica discover` command does:
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
    let advertiser = hosts.a.advertise(DEVICE_A);
    // B announces itself too, and browses leaving itself out.
    let advertiser_b = hosts.b.advertise(DEVICE_B);
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
    let mut advertiser = hosts.a.advertise(DEVICE_A);
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

// The product's flow, through the command line.

/// Two devices, each a client home and a real `mindoo-replica` process in
/// its own namespace: A serves its store and announces it, B finds it and
/// syncs with it both ways.
#[cfg(feature = "tools")]
mod command_line {
    use super::*;
    use serde_json::Value;

    const EXE: &str = env!("CARGO_BIN_EXE_mindoo-replica");
    const DB: &str = "acme/notes";
    const PASSPHRASE: &str = "discovery-test";
    /// Rounds of B's sync that may pass without the expected exchange
    /// before the test gives up (each listens 3 s, then waits 1 s).
    const ROUNDS: usize = 3;

    fn exe() -> &'static Path {
        Path::new(EXE)
    }

    /// `mindoo-replica ARGS -n acme/notes --home HOME`, outside any
    /// namespace (a home is files); what it printed.
    fn on(home: &Path, args: &[&str]) -> String {
        let out = Command::new(EXE)
            .args(args)
            .args(["-n", DB, "--home"])
            .arg(home)
            .env("MINDOO_PASSPHRASE", PASSPHRASE)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {EXE}: {e}"));
        assert!(
            out.status.success(),
            "`mindoo-replica {} -n {DB} --home {}` failed ({}):\n{}{}",
            args.join(" "),
            home.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `doc show ID` on `home`, as JSON.
    fn show(home: &Path, id: &str) -> Value {
        let text = on(home, &["doc", "show", id]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("doc show printed {text:?}: {e}"))
    }

    /// The next `round N: …` line of B's sync; fails the test, with what
    /// both sides printed, if none comes by `deadline`.
    fn next_round(sync: &mut Proc, serve: &Proc, deadline: Instant) -> String {
        loop {
            match sync.next_line(deadline) {
                Some(line) if line.starts_with("round ") => return line,
                Some(_) => {}
                None => panic!(
                    "{}: no round line in time (or it exited); it printed:\n{}\n\
                     serve in A printed:\n{}",
                    sync.name,
                    sync.printed(),
                    serve.printed()
                ),
            }
        }
    }

    /// Reads B's rounds until one passes `test`; after [`ROUNDS`] that do
    /// not, fails the test saying what the rounds showed.
    fn round_that(
        sync: &mut Proc,
        serve: &Proc,
        what: &str,
        test: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(8 * ROUNDS as u64);
        let mut seen = Vec::new();
        while seen.len() < ROUNDS {
            let line = next_round(sync, serve, deadline);
            if test(&line) {
                return line;
            }
            seen.push(line);
        }
        let hint = if seen.iter().all(|l| l.contains(": 0 device(s) found")) {
            "B found no device at all: A is not announced over mDNS \
             (does serve run with --advertise, and does it announce?)"
        } else {
            "B found a device but did not exchange as expected"
        };
        panic!(
            "B's `sync --discover` did not {what} in {ROUNDS} rounds. {hint}.\n\
             Its rounds:\n{}\nserve in A printed:\n{}",
            seen.join("\n"),
            serve.printed()
        );
    }

    /// The product's flow end to end: keys shared and a document made on
    /// A before anything runs; A serves its home and announces it; in B,
    /// `discover` lists A by its device name at its IPv4 address and
    /// `sync --discover` finds A, pulls the document, and pushes an edit
    /// made on B between rounds; A stops on SIGTERM (exit 0), saying
    /// goodbye over mDNS, and holds B's edit.
    #[test]
    fn two_devices_find_each_other_and_sync() {
        let started = Instant::now();
        let hosts = Hosts::new("cli");
        let network_at = started.elapsed();
        let dirs = tempfile::tempdir().unwrap();
        let (a, b) = (dirs.path().join("home-a"), dirs.path().join("home-b"));
        let (a_str, b_str) = (a.to_str().unwrap(), b.to_str().unwrap());

        // 1. Keys made on A and imported on B; a document made on A.
        on(&a, &["keys", "init"]);
        let sealed = dirs.path().join("notes.keys");
        on(&a, &["keys", "export", "--out", sealed.to_str().unwrap()]);
        on(&b, &["keys", "import", sealed.to_str().unwrap()]);
        let marker = format!("made-on-a-{}", std::process::id());
        let json = serde_json::json!({"title": "notes", "marker": marker}).to_string();
        let id = on(&a, &["doc", "create", "--json", &json])
            .trim()
            .to_owned();
        assert!(!id.is_empty(), "doc create printed no id");
        // The name A is known by (src/home.rs): its actor id, made with
        // the home.
        let actor = std::fs::read_to_string(a.join("actor")).expect("A's home has its actor id");
        let device_a = format!("device-{}", actor.trim());

        // 2. A serves its store at its veth address and announces it.
        let a_addr = SocketAddr::new(hosts.a.ipv4, SYNC_PORT);
        let mut command = hosts
            .a
            .command(exe(), &["serve", "--client-home", a_str, "--advertise"]);
        command
            .env("MINDOO_REPLICA__SERVER__LISTEN", a_addr.to_string())
            .env("MINDOO_REPLICA__SERVER__METRICS_LISTEN", "")
            // A device has no load balancer to wait for: stop at once.
            .env("MINDOO_REPLICA__SERVER__SHUTDOWN_DELAY_MS", "0");
        let mut serve = Proc::start(command, format!("serve in {}", hosts.a.netns));
        let ready = serve.expect_line("mindoo-replica listening ", Duration::from_secs(20));
        assert_eq!(
            ready,
            format!("mindoo-replica listening grpc={a_addr} metrics=off")
        );
        let serving_at = started.elapsed();

        // 3. In B, at once: a watcher for A's goodbye (mdns-sd itself),
        // `discover`, and `sync --discover` in rounds.
        let mut watcher = hosts.b.spawn(&[
            (ROLE, "watch"),
            (SERVICE, discover::SERVICE_TYPE),
            (NODE, &device_a),
            (WAIT_MS, "60000"),
        ]);
        let discovering = Proc::start(
            hosts.b.command(exe(), &["discover", "--wait-secs", "3"]),
            format!("discover in {}", hosts.b.netns),
        );
        let mut command = hosts.b.command(
            exe(),
            &[
                "sync",
                "--home",
                b_str,
                "--discover",
                "--discover-wait",
                "3s",
                "--every",
                "1s",
                "--stop-after",
                "20",
            ],
        );
        command.env("MINDOO_PASSPHRASE", PASSPHRASE);
        let mut sync = Proc::start(command, format!("sync in {}", hosts.b.netns));

        // B finds A alone, at A's IPv4 address, and pulls the document.
        let pulled = round_that(&mut sync, &serve, "get A's document", |l| {
            l.contains(" got 1 ")
        });
        let expected = format!("1 device(s) found; {device_a} ({a_addr}) sent 0 got 1 (");
        assert!(
            pulled.contains(&expected),
            "B's round should find only A, at {a_addr}, and get its document: {pulled:?}"
        );
        let pulled_at = started.elapsed();
        let on_b = show(&b, &id);
        assert_eq!(on_b["marker"], marker, "B's copy of A's document: {on_b}");

        // B edits between rounds; a later round pushes the edit to A.
        let edit = format!("edited-on-b-{}", std::process::id());
        // (A bare word is taken as a JSON string.)
        on(&b, &["doc", "set", &id, "title", &edit]);
        let pushed = round_that(&mut sync, &serve, "push B's edit", |l| {
            l.contains(" sent 1 ")
        });
        let expected = format!("1 device(s) found; {device_a} ({a_addr}) sent 1 got 0 (");
        assert!(
            pushed.contains(&expected),
            "B's round should push its one edit to A: {pushed:?}"
        );
        let pushed_at = started.elapsed();
        sync.terminate();
        sync.finish_ok(Duration::from_secs(15));

        // 4. `discover` in B listed A by its device name, at A's IPv4 address first.
        let listed = discovering.finish_ok(Duration::from_secs(15));
        let devices = found_devices(&listed);
        assert_eq!(
            devices
                .iter()
                .map(|(node, _)| node.as_str())
                .collect::<Vec<_>>(),
            [device_a.as_str()],
            "`discover` in B should list A, and only A; it printed:\n{}",
            listed.join("\n")
        );
        assert_eq!(
            devices[0].1[0], a_addr,
            "A's first address should be its IPv4 one: {:?}",
            devices[0].1
        );

        // 5. A stops on SIGTERM, exits 0 and says goodbye; it holds B's edit.
        watcher.expect_line("resolved ", Duration::from_secs(5));
        let stopped_at = Instant::now();
        serve.terminate();
        watcher.expect_line("removed ", Duration::from_secs(5));
        let goodbye = stopped_at.elapsed();
        serve.finish_ok(Duration::from_secs(15));
        watcher.finish_ok(Duration::from_secs(10));
        assert!(
            goodbye < Duration::from_secs(4),
            "B saw A's goodbye {goodbye:?} after SIGTERM"
        );
        let on_a = show(&a, &id);
        assert_eq!(
            (&on_a["title"], &on_a["marker"]),
            (&Value::from(edit), &Value::from(marker)),
            "A's copy should hold B's edit: {on_a}"
        );
        eprintln!(
            "network ready after {network_at:?}, A serving after {serving_at:?}, \
             A's document on B after {pulled_at:?}, B's edit on A after {pushed_at:?}, \
             A's goodbye seen {goodbye:?} after SIGTERM; all in {:?}",
            started.elapsed()
        );
    }
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

    /// `program ARGS` in this namespace, its output piped.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// A child announcing `node` on the real service type, once it says
    /// it does.
    fn advertise(&self, node: &str) -> Proc {
        let mut advertiser = self.spawn(&[
            (ROLE, "advertise"),
            (SERVICE, discover::SERVICE_TYPE),
            (NODE, node),
            (PORT, &SYNC_PORT.to_string()),
        ]);
        advertiser.expect_line("advertising ", Duration::from_secs(10));
        advertiser
    }

    /// This test binary's `namespaced_child` in this namespace, with `env`.
    fn spawn(&self, env: &[(&str, &str)]) -> Proc {
        let exe = std::env::current_exe().unwrap();
        let mut command = self.command(
            &exe,
            &[
                "--exact",
                "namespaced_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ],
        );
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

    /// The next stdout line, or `None` once `deadline` passes or the child
    /// has closed its stdout.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(left).ok()
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
