//! Pulling: bootstrap and follow, filters and policy, restarts, silent,
//! failing and duplicate peers, budgets.

use super::*;

#[tokio::test(start_paused = true)]
async fn bootstraps_then_follows_through_the_in_process_adapter() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let local = replica("local", Arc::new(MemoryStore::new()));
    put(&source, &entries(&ns("a"), 500, 100)).await;
    let pulling = pull(&local, &source, fast(), 1 << 20);
    wait_for(&local, 500).await;
    // Live entries follow.
    put(&source, &entries(&ns("a"), 50, 100)).await;
    wait_for(&local, 550).await;
    // The status follows the commit a moment later.
    wait_for_cursor(&local, "source", 550).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = pulling.board.snapshot().remove(0);
        if status.cursor_seq == 550 || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(status.peer, "source", "keyed by node identity");
    assert_eq!(status.state, "follow");
    assert_eq!(status.cursor_seq, 550);
    drop(pulling);
}

#[tokio::test(start_paused = true)]
async fn joining_three_peers_moves_each_body_once() {
    // Three peers that all hold the same 300 entries.
    let batch = entries(&ns("a"), 300, 200);
    let mut sources = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let source = replica(name, Arc::new(MemoryStore::new()));
        put(&source, &batch).await;
        sources.push(source);
    }
    let local = replica("local", Arc::new(MemoryStore::new()));
    let shared = Shared::default();
    let pullings: Vec<Pulling> = sources
        .iter()
        .map(|s| pull_shared(&local, s, fast(), 1 << 20, shared.clone()))
        .collect();
    wait_for(&local, 300).await;
    let body_bytes: usize = batch.iter().map(|e| e.data().len()).sum();
    // Every worker is past the entries (its cursor is at the peer's head).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for p in &pullings {
        while p.board.snapshot()[0].cursor_seq < 300 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                pullings
                    .iter()
                    .map(|p| p.board.snapshot())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let text = local.metrics().render(&local.stats(), 0);
    let received: f64 = text
        .lines()
        .filter(|l| l.starts_with("mindoo_replica_peer_bytes_pulled_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(received as usize, body_bytes, "each body crossed once");
}

/// A filter change that lands while a worker passes from one session to
/// the next (here: bootstrap done, follow opening) still reaches it.
#[tokio::test(start_paused = true)]
async fn a_filter_change_between_two_sessions_is_not_lost() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let local = replica("local", Arc::new(MemoryStore::new()));
    put(&source, &entries(&ns("a"), 20, 64)).await;
    put(&source, &entries(&ns("b"), 10, 64)).await;
    let peer = Observed::new(&source, true);
    let only_a = SyncSettings {
        namespaces: vec![ns("a")],
        ..fast()
    };
    let pulling = pull_from(&local, peer.clone(), only_a, 1 << 20, Shared::default());
    peer.arrived.notified().await;
    pulling.settings.send_modify(|s| s.namespaces.push(ns("b")));
    peer.go.notify_one();
    wait_for(&local, 30).await;
}

/// Entries a policy refused are not forgotten: after a restart with a
/// policy that trusts their author, the pull looks at what its cursor
/// passed again and they arrive.
#[tokio::test(start_paused = true)]
async fn entries_of_a_newly_trusted_author_arrive_after_a_restart() {
    use crate::policy::NamespaceRules;
    let (alice, bob) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    let trusting = |keys: &[&SigningKey]| Policy {
        namespaces: [(
            ns("a"),
            NamespaceRules {
                trusted_authors: keys.iter().map(|k| k.verifying_key().to_bytes()).collect(),
                require_signature: Some(true),
            },
        )]
        .into(),
        ..Default::default()
    };
    let sample = |key: &SigningKey| crate::fixtures::sample_entries(&ns("a"), key, 10, 64);
    let source = replica("source", Arc::new(MemoryStore::new()));
    put(&source, &sample(&alice)).await;
    put(&source, &sample(&bob)).await;

    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let local = replica_with("local", store.clone(), 8 << 20, trusting(&[&alice]));
    let pulling = pull(&local, &source, fast(), 1 << 20);
    wait_for(&local, 10).await;
    wait_for_cursor(&local, "source", 20).await;
    drop(pulling);

    // Restarted on the same store, now trusting bob too.
    let local = replica_with("local", store, 8 << 20, trusting(&[&alice, &bob]));
    let _pulling = pull(&local, &source, fast(), 1 << 20);
    wait_for(&local, 20).await;
}

/// Right after a restart, before the peer answers (here: it is down), the
/// status shows where the pull got to and when, from the persisted cursor.
#[tokio::test(start_paused = true)]
async fn after_a_restart_status_shows_the_persisted_cursor() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    put(&source, &entries(&ns("a"), 20, 64)).await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let local = replica("local", store.clone());
    let pulling = pull(&local, &source, fast(), 1 << 20);
    wait_for(&local, 20).await;
    wait_for_cursor(&local, "source", 20).await;
    drop(pulling);

    let local = replica("local", store);
    let peer = Observed::new(&source, false);
    peer.down.store(true, Ordering::SeqCst);
    let pulling = pull_from(&local, peer, fast(), 1 << 20, Shared::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = pulling.board.snapshot().remove(0);
        if s.last_error.is_some() {
            assert_eq!(s.cursor_seq, 20, "{s:?}");
            assert!(s.last_success.is_some(), "{s:?}");
            assert!(!s.connected);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Simulated time: a silent session is given up after exactly the idle
/// timeout, then retried after the backoff, without waiting in real time.
#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_given_up_after_the_idle_timeout_in_simulated_time() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let local = replica("local", Arc::new(MemoryStore::new()));
    let settings = SyncSettings {
        session_idle_timeout: Duration::from_secs(90),
        ..fast()
    };
    let peer = Arc::new(Silent(LocalPeer::new(source.clone())));
    let pulling = pull_from(&local, peer, settings, 1 << 20, Shared::default());
    let timeouts = || {
        let text = local.metrics().render(&local.stats(), 0);
        let line = "mindoo_replica_peer_errors_total{kind=\"timeout\",peer=\"source\"} ";
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    let started = tokio::time::Instant::now();
    let connected = || {
        let text = local.metrics().render(&local.stats(), 0);
        text.lines()
            .find_map(|l| l.strip_prefix("mindoo_replica_peer_connected{peer=\"source\"} "))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    // Heartbeats are due every 30 s: at 44 s the peer still counts as
    // connected; at 46 s, half a beat late, it shows as disconnected while
    // the session waits out the idle timeout.
    tokio::time::sleep(Duration::from_secs(44)).await;
    assert_eq!(connected(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(connected(), 0, "silent for a heartbeat and a half");
    assert!(!pulling.board.snapshot()[0].connected);
    assert_eq!(timeouts(), 0, "the session goes on");
    tokio::time::sleep(Duration::from_secs(43)).await;
    assert_eq!(timeouts(), 0, "still within the idle timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(timeouts(), 1, "given up once, at 90 s");
    // Retried after at most the backoff ceiling, and given up again 90 s later.
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert_eq!(timeouts(), 2);
    assert!(started.elapsed() >= Duration::from_secs(181));
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_is_this_process_pauses_the_worker() {
    let local = replica("local", Arc::new(MemoryStore::new()));
    let pulling = pull(&local, &local, fast(), 1 << 20);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = pulling.board.snapshot().remove(0);
        if s.is_self && s.state == "paused" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn two_processes_with_one_incarnation_still_replicate() {
    // The same store under two node identities: one data directory copied
    // to two processes. Neither may take the other for itself.
    let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = replica("a", shared.clone());
    let b_store = Faulty {
        incarnation: Some(shared.incarnation()),
        ..Faulty::new()
    }
    .store();
    let b = replica("b", b_store);
    assert_eq!(a.incarnation(), b.incarnation());
    put(&a, &entries(&ns("a"), 20, 64)).await;
    let pulling = pull(&b, &a, fast(), 1 << 20);
    wait_for(&b, 20).await;
    let s = pulling.board.snapshot().remove(0);
    assert!(!s.is_self && s.shares_incarnation, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_widened_filter_brings_entries_the_cursor_already_passed() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let local = replica("local", Arc::new(MemoryStore::new()));
    // Interleaved, so the cursor passes `b` records while pulling `a`.
    for _ in 0..5 {
        put(&source, &entries(&ns("a"), 20, 64)).await;
        put(&source, &entries(&ns("b"), 10, 64)).await;
    }
    let only_a = SyncSettings {
        namespaces: vec![ns("a")],
        ..fast()
    };
    let pulling = pull(&local, &source, only_a, 1 << 20);
    wait_for(&local, 100).await;
    // The cursor passes every record (batches of `b` alone store nothing,
    // so it is persisted a moment later).
    wait_for_cursor(&local, "source", 150).await;

    // A reload adds `b`: what the cursor passed must arrive too.
    pulling.settings.send_modify(|s| s.namespaces.push(ns("b")));
    wait_for(&local, 150).await;
    // And the cursor remembers the new filter, so a restart does not rescan.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let record = local.peer_cursor("source").await.unwrap().unwrap();
        let now = pulling.settings.borrow().scope();
        if record.scope == now {
            assert_eq!(record.cursor.seq, 150);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn failing_commits_back_off_and_the_pull_recovers() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let failures = Arc::new(AtomicUsize::new(3));
    let store = Faulty {
        fail_appends: failures.clone(),
        ..Faulty::new()
    }
    .store();
    let local = replica("local", store);
    put(&source, &entries(&ns("a"), 200, 64)).await;
    let _pulling = pull(&local, &source, fast(), 1 << 20);
    wait_for(&local, 200).await;
    assert_eq!(failures.load(Ordering::Relaxed), 0, "every failure was hit");
    let text = local.metrics().render(&local.stats(), 0);
    assert!(
        text.contains("mindoo_replica_peer_errors_total{kind=\"store\",peer=\"source\"} 3"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn entry_data_held_by_a_pull_stays_within_the_budget() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let store = Faulty::new().store();
    let local = replica("local", store.clone());
    // Caught up first, so the rest arrives as ids only and bodies are fetched.
    put(&source, &entries(&ns("a"), 1, 64)).await;
    let budget = 1 << 20;
    let pulling = pull(&local, &source, fast(), budget);
    *store.hooks.budget.lock().unwrap() = Some(pulling.budget.clone());
    wait_for(&local, 1).await;
    // 64 entries of 256 KiB: 16 MiB through a 1 MiB budget.
    put(&source, &entries(&ns("a"), 64, 256 << 10)).await;
    wait_for(&local, 65).await;
    let peak = store.hooks.max_in_use.load(Ordering::Relaxed);
    assert!(peak > 0, "the budget was in use while committing");
    assert!(peak <= budget, "held {peak} bytes, budget {budget}");
    assert_eq!(pulling.budget.in_use(), 0, "everything given back");
}
