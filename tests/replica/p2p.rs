//! Devices syncing with no replica in between, through the command line:
//! two homes on one machine (`sync-local`), and one device serving its
//! store to another that syncs with it in rounds over the network, editing
//! while it does, from before the first device is up.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mindoo_replica::tools::child::{ChildListeners, ReplicaProcess};
use serde_json::Value;

use crate::harness::cli;

/// `cli` on the database `acme/notes`.
fn run(home: &Path, args: &[&str]) -> Result<String, String> {
    let mut all = args.to_vec();
    all.extend(["--namespace", "acme/notes"]);
    cli(home, &all)
}

/// Keys made on `a` and handed to `b`.
fn share_keys(a: &Path, b: &Path) {
    run(a, &["keys", "init"]).unwrap();
    let sealed = a.join("notes.keys");
    run(a, &["keys", "export", "--out", sealed.to_str().unwrap()]).unwrap();
    run(b, &["keys", "import", sealed.to_str().unwrap()]).unwrap();
}

fn show(home: &Path, id: &str) -> String {
    run(home, &["doc", "show", id]).unwrap()
}

#[test]
fn sync_local_joins_offline_edits_of_two_homes_both_ways() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    share_keys(a, b);
    let id = run(
        a,
        &["doc", "create", "--json", r#"{"title":"t","list":[]}"#],
    )
    .unwrap();
    let id = id.trim();
    let out = cli(a, &["sync-local", a_s, b_s]).unwrap();
    assert!(out.contains("1 sent, 1 new there"), "{out}");

    // Offline edits on both, then one sync-local.
    for (home, field, who) in [(a, "x", "from-a"), (b, "y", "from-b")] {
        run(home, &["doc", "set", id, field, "1"]).unwrap();
        run(home, &["doc", "set", id, "list.0", who]).unwrap();
        run(home, &["doc", "set", id, "z", who]).unwrap();
    }
    let out = cli(a, &["sync-local", a_s, b_s]).unwrap();
    assert!(
        out.contains("3 sent, 3 new there") && out.ends_with("3 new here\n"),
        "{out}"
    );
    let (shown_a, shown_b) = (show(a, id), show(b, id));
    assert_eq!(shown_a, shown_b, "both homes hold the same document");
    let json: Value = serde_json::from_str(&shown_a).unwrap();
    assert_eq!((&json["x"], &json["y"]), (&Value::from(1), &Value::from(1)));
    assert!(["from-a", "from-b"].contains(&json["z"].as_str().unwrap()));
    assert_eq!(json["list"].as_array().unwrap().len(), 2, "{json}");

    let out = cli(a, &["sync-local", a_s, b_s]).unwrap();
    assert!(
        out.contains("0 sent, 0 new there") && out.ends_with("0 new here\n"),
        "{out}"
    );
}

/// A `sync` process whose output lines arrive on a channel.
struct Syncing {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Syncing {
    fn start(home: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mindoo-replica"))
            .arg("sync")
            .args(args)
            .env("MINDOO_CLIENT_HOME", home)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line that passes `test`; the lines so far on failure.
    fn until(&mut self, what: &str, mut test: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if test(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {what}; saw {:#?}", self.seen),
            }
        }
    }

    fn stop(mut self) {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "sync ended {status}; saw {:#?}",
            self.seen
        );
    }
}

/// How many entries a round line says were sent to the peer.
fn sent(line: &str) -> u64 {
    line.split(" sent ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_serves_its_store_and_another_syncs_with_it_in_rounds_while_editing() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    share_keys(a, b);
    let id = run(a, &["doc", "create", "--json", r#"{"title":"from a"}"#]).unwrap();
    let id = id.trim().to_owned();

    // The address A will serve at; nothing listens there yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut sync = Syncing::start(b, &["--replica", &addr, "--every", "200ms"]);
    sync.until("A unreachable", |l| l.contains("unreachable"));

    // A comes up, serving its own store; B catches up with it.
    let listeners = ChildListeners::bind(&addr, None).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_mindoo-replica"));
    let served = ReplicaProcess::spawn_device(exe, a, listeners)
        .await
        .unwrap();
    sync.until("A's document pulled", |l| l.contains(" got 1"));

    // B edits while its sync runs: each command waits out a round.
    run(b, &["doc", "set", &id, "y", "2"]).unwrap();
    run(b, &["doc", "set", &id, "title", "from b"]).unwrap();
    let mut pushed = 0;
    sync.until("B's two edits pushed", |l| {
        pushed += sent(l);
        pushed >= 2
    });
    sync.stop();
    served.stop().await.unwrap();

    let (shown_a, shown_b) = (show(a, &id), show(b, &id));
    assert_eq!(shown_a, shown_b);
    let json: Value = serde_json::from_str(&shown_a).unwrap();
    assert_eq!(json, serde_json::json!({"title": "from b", "y": 2}));
}
