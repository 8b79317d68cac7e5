//! The client through a real mesh: two devices edit one document offline,
//! push to different replicas, pull after the mesh converges, and end with
//! the same document; no replica holds a readable trace of it.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use mindoo_replica::database::Database;
use mindoo_replica::edit::set_path;
use mindoo_replica::exchange::Exchange;
use mindoo_replica::keys::{KeyRing, key_path};
use serde_json::json;

use crate::harness::*;

fn exchange(replica: &TestReplica, db: &Database) -> Exchange {
    Exchange::grpc(&replica.addr.to_string(), Duration::from_secs(20))
        .unwrap()
        .only(db.namespace().clone())
}

/// Every file under `dir`, read whole.
fn files(dir: &Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_through_different_replicas_converge_and_no_replica_can_read_them() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas = mesh(&dirs).await;
    let (home_a, home_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let keys = KeyRing::generate(1);
    keys.create(&key_path(home_a.path(), &ns())).unwrap();
    let sealed = keys.export("pw", false);
    KeyRing::from_export(KeyRing::open_export(&sealed, "pw").unwrap())
        .unwrap()
        .create(&key_path(home_b.path(), &ns()))
        .unwrap();
    let a = Database::open(home_a.path(), ns()).unwrap();
    let b = Database::open(home_b.path(), ns()).unwrap();

    // A starts the document and pushes it; B pulls it through replica 1.
    let marker = "zebra-marker-4711";
    let mut doc_a = a
        .create(&json!({"title": marker, "items": []}))
        .await
        .unwrap();
    let pushed = exchange(&replicas[0], &a).push(a.store()).await.unwrap();
    assert_eq!(pushed.sent, 1);
    exchange(&replicas[0], &b).pull(b.store()).await.unwrap();
    let mut doc_b = b.load(doc_a.id()).await.unwrap();
    assert_eq!(doc_b.to_json(), doc_a.to_json());

    // Offline on both, then A pushes to replica 1 and B to replica 3.
    set_path(&mut doc_a, "x", &json!(1)).unwrap();
    set_path(&mut doc_a, "z", &json!("from a")).unwrap();
    set_path(&mut doc_a, "items.0", &json!("milk")).unwrap();
    a.save(&mut doc_a).await.unwrap();
    // The marker split across two edits.
    set_path(&mut doc_a, "note", &json!("zebra-")).unwrap();
    a.save(&mut doc_a).await.unwrap();
    set_path(&mut doc_a, "note2", &json!("marker-4711")).unwrap();
    a.save(&mut doc_a).await.unwrap();
    set_path(&mut doc_b, "y", &json!(2)).unwrap();
    set_path(&mut doc_b, "z", &json!("from b")).unwrap();
    set_path(&mut doc_b, "items.0", &json!("eggs")).unwrap();
    b.save(&mut doc_b).await.unwrap();
    exchange(&replicas[0], &a).push(a.store()).await.unwrap();
    let pushed = exchange(&replicas[2], &b).push(b.store()).await.unwrap();
    assert_eq!(pushed.sent, 1, "B sends only its own change: {pushed:?}");
    for r in &replicas {
        r.wait_for_count(5, 20).await;
    }
    exchange(&replicas[0], &a).pull(a.store()).await.unwrap();
    exchange(&replicas[2], &b).pull(b.store()).await.unwrap();

    let (json_a, json_b) = (
        a.load(doc_a.id()).await.unwrap().to_json(),
        b.load(doc_a.id()).await.unwrap().to_json(),
    );
    assert_eq!(
        serde_json::to_string(&json_a).unwrap(),
        serde_json::to_string(&json_b).unwrap()
    );
    assert_eq!(json_a["x"], 1);
    assert_eq!(json_a["y"], 2);
    assert!(json_a["z"] == "from a" || json_a["z"] == "from b");
    let mut items: Vec<&str> = json_a["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    items.sort();
    assert_eq!(items, ["eggs", "milk"]);

    for r in replicas {
        r.stop().await.unwrap();
    }
    // No replica's files hold the marker, whole or split, in any form.
    let forms = |s: &str| {
        vec![
            s.as_bytes().to_vec(),
            hex::encode(s).into_bytes(),
            base64::engine::general_purpose::STANDARD
                .encode(s)
                .into_bytes(),
        ]
    };
    let mut needles = forms(marker);
    needles.extend(forms("zebra-"));
    needles.extend(forms("marker-4711"));
    let mut all = Vec::new();
    for d in &dirs {
        files(d.path(), &mut all);
    }
    assert!(all.len() > 5, "the replicas wrote files");
    for (path, bytes) in &all {
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == &needle[..]),
                "{} holds {:?}",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doc_push_and_pull_commands_hand_a_document_to_another_device() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let addr = replica.addr.to_string();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    let ns = ["--namespace", "acme/notes"];
    let run = |home: &Path, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(ns);
        cli(home, &all)
    };

    let err = run(a, &["doc", "list"]).unwrap_err();
    assert!(err.contains("keys init"), "{err}");
    run(a, &["keys", "init"]).unwrap();
    let id = run(
        a,
        &["doc", "create", "--json", r#"{"title":"notes","tags":[]}"#],
    )
    .unwrap()
    .trim()
    .to_owned();
    run(a, &["doc", "set", &id, "tags.0", "work"]).unwrap();
    run(a, &["doc", "set", &id, "pages", "3"]).unwrap();
    let err = run(a, &["doc", "set", &id, "tags.7", "x"]).unwrap_err();
    assert!(err.contains("tags.7"), "{err}");
    run(
        a,
        &[
            "doc",
            "edit",
            &id,
            "--set",
            "pages=3",
            "--insert",
            "tags.0=first",
            "--delete",
            "tags.1",
            "--set",
            "draft=true",
        ],
    )
    .unwrap();
    run(a, &["doc", "edit", &id, "--delete", "draft"]).unwrap();
    let err = run(a, &["doc", "edit", &id, "--delete", "draft"]).unwrap_err();
    assert!(err.contains("nothing there"), "{err}");
    let history = run(a, &["doc", "history", &id]).unwrap();
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 5, "{history}");
    assert!(lines[3].ends_with(", 3 ops"), "{history}");
    let listed = run(a, &["doc", "list"]).unwrap();
    assert!(listed.contains(&format!("{id} changes 5")), "{listed}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    let err = run(a, &["push", "--replica", &dead]).unwrap_err();
    assert!(
        err.contains(&format!("cannot reach the replica at {dead}")) && err.contains("refused"),
        "{err}"
    );
    let pushed = run(a, &["push", "--replica", &addr]).unwrap();
    assert!(pushed.contains("5 sent"), "{pushed}");

    // Another device gets the keys, pulls, and sees the same document.
    let sealed = a.join("notes.keys");
    run(a, &["keys", "export", "--out", sealed.to_str().unwrap()]).unwrap();
    run(b, &["keys", "import", sealed.to_str().unwrap()]).unwrap();
    let pulled = run(b, &["pull", "--replica", &addr]).unwrap();
    assert!(pulled.contains("5 new entries"), "{pulled}");
    let shown = run(b, &["doc", "show", &id]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        json,
        json!({"title": "notes", "tags": ["first"], "pages": 3})
    );
    let again = run(b, &["pull", "--replica", &addr]).unwrap();
    assert!(again.contains("0 new entries"), "{again}");
    let err = run(b, &["doc", "show", "00112233445566778899aabbccddeeff"]).unwrap_err();
    assert!(err.contains("no document"), "{err}");
    replica.stop().await.unwrap();
}

/// Waits until `db`'s store holds `count` entries.
async fn wait_for_entries(db: &Database, count: u64) {
    use mindoo_replica::sync::local::Local;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut head = db.store().subscribe();
    while db.store().stats().entries < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let woke = tokio::time::timeout(left, head.changed()).await;
        assert!(
            woke.is_ok(),
            "{} of {count} entries",
            db.store().stats().entries
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_following_a_replica_live_edits_while_both_ways_flow() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let (home_a, home_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let keys = KeyRing::generate(1);
    keys.create(&key_path(home_a.path(), &ns())).unwrap();
    keys.create(&key_path(home_b.path(), &ns())).unwrap();
    let a = Database::open(home_a.path(), ns()).unwrap();
    let b = Database::open(home_b.path(), ns()).unwrap();

    // A follows the replica while it edits: each edit reaches the replica.
    let following = exchange(&replica, &a).follow(a.store());
    let mut doc = a.create(&json!({"n": 0})).await.unwrap();
    for n in 1..=3 {
        set_path(&mut doc, "n", &json!(n)).unwrap();
        a.save(&mut doc).await.unwrap();
    }
    replica.wait_for_count(4, 20).await;

    // B's edit, pushed to the replica, reaches A without A asking.
    exchange(&replica, &b).pull(b.store()).await.unwrap();
    let mut doc_b = b.load(doc.id()).await.unwrap();
    set_path(&mut doc_b, "from_b", &json!(true)).unwrap();
    b.save(&mut doc_b).await.unwrap();
    exchange(&replica, &b).push(b.store()).await.unwrap();
    wait_for_entries(&a, 5).await;
    let seen = a.load(doc.id()).await.unwrap().to_json();
    assert_eq!(seen, json!({"n": 3, "from_b": true}));
    let status = following.pull_status();
    assert!(status.connected && status.entries_pulled == 1, "{status:?}");
    assert_eq!(following.pushed.borrow().stored, 4);
    following.stop().await;
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_trusts_other_authors_refuses_the_push_and_the_client_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = hex::encode(author().verifying_key().to_bytes());
    let replica = TestReplica::start(dir.path(), |c| {
        c.policy.namespaces = vec![mindoo_replica::config::RawNamespace {
            tenant: "acme".into(),
            db: "notes".into(),
            trusted_authors: vec![trusted],
            ..Default::default()
        }];
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--namespace", "acme/notes"]);
        cli(home.path(), &all)
    };
    let shown = run(&["keys", "init"]).unwrap();
    let mine = shown
        .lines()
        .find_map(|l| l.strip_prefix("author "))
        .unwrap();
    run(&["doc", "create"]).unwrap();
    let err = run(&["push", "--replica", &replica.addr.to_string()]).unwrap_err();
    assert!(
        err.contains("refused 1 entries (author_not_trusted")
            && err.contains(&format!("add {mine} to acme/notes's trusted_authors")),
        "{err}"
    );
    assert_eq!(replica.entry_count().await, 0, "nothing stored");
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_push_resumes_without_resending_what_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let home = tempfile::tempdir().unwrap();
    KeyRing::generate(1)
        .create(&key_path(home.path(), &ns()))
        .unwrap();
    let db = Database::open(home.path(), ns()).unwrap();
    let total = 20_000u64;
    for chunk in entries(total as usize).chunks(2_000) {
        let items = chunk
            .iter()
            .map(|e| (bytes::Bytes::copy_from_slice(&e.id.0), e.data().clone()))
            .collect();
        let (_, refused) = db.store().write(items).await.unwrap();
        assert!(refused.is_empty());
    }

    // The first push is stopped part way.
    let following = exchange(&replica, &db).follow(db.store());
    let mut pushed = following.pushed.clone();
    pushed.wait_for(|p| p.stored >= 2_000).await.unwrap();
    following.stop().await;
    let held = replica.entry_count().await;
    assert!(held < total, "the push was stopped before the end ({held})");

    let again = exchange(&replica, &db).push(db.store()).await.unwrap();
    assert_eq!(replica.entry_count().await, total, "everything arrived");
    assert!(
        again.sent <= total - held,
        "{} sent again, {held} of {total} were already there",
        again.sent
    );
    replica.stop().await.unwrap();
}
