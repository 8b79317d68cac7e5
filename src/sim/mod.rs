//! A deterministic simulation of a mesh of replicas, driven by one seed.
//!
//! Five replica cores on memory stores pull from each other through the
//! sync engine, over a simulated network ([`net`]) that delays every call
//! and message by a random time (so they reorder) and fails them while a
//! link is cut or a peer is down. The driver writes random batches to
//! random replicas, cuts and heals links, crashes replicas and restarts
//! them with their data kept or lost, and restores one from an old backup.
//! Then the faults stop, the network heals, and every replica must hold
//! the same set: every acknowledged entry except those whose only copy a
//! crash or restore took.
//!
//! Time is tokio's, paused: it jumps ahead whenever nothing can run, so a
//! minute of faults takes milliseconds. Blocking work runs inline on the
//! one thread (see [`crate::blocking`]), the engine's clock and jitter
//! come from the seed (see [`crate::sync::env`]), and so do the entries
//! written and every decision of the driver and the network: a seed
//! replays its trace (the faults, the writes, what each crashed replica
//! held, when the mesh converged, and a hash of every replica's log in
//! order), and a failing seed prints it. What tokio chooses at random
//! (which of a watch channel's waiters wakes first, which branch of an
//! unbiased `select!` is polled first) comes from the seed too: the
//! runtime is seeded (`Builder::rng_seed`, which needs the
//! `tokio_unstable` cfg that `.cargo/config.toml` sets).
//!
//! Besides convergence, each restart checks the engine's crash-safety
//! invariant: a cursor persisted into a peer's log at `seq` means every
//! entry of that log up to `seq` is held. [`Plant`] puts a known bug in,
//! to show that the simulation finds it.

pub mod net;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::entry::{Entry, EntryId, Envelope, Namespace, PutOutcome, VerifiedEntry};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::replica::{NodeIdentity, Replica};
use crate::store::decorated::{Decorated, Hooks};
use crate::store::memory::MemoryStore;
use crate::store::ranges::FingerprintKey;
use crate::store::{Appended, CursorUpdate, Store, StoreError};
use crate::sync::budget::ByteBudget;
use crate::sync::env::{Env, TokioClock};
use crate::sync::puller::Puller;
use crate::sync::status::StatusBoard;
use crate::sync::{Shared, SyncSettings};
use net::{Net, SimPeer};

const NODES: usize = 5;

/// A bug put in on purpose, to show the simulation finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// The store commits a pull's cursor before its entries, in two
    /// writes; a crash between them loses the entries below the cursor.
    CursorBeforeData,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Driver steps of the faulty phase.
    pub steps: usize,
    pub plant: Option<Plant>,
}

impl Options {
    /// Driver steps of a run, unless told otherwise.
    pub const STEPS: usize = 120;

    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            steps: Self::STEPS,
            plant: None,
        }
    }

    /// The command that replays this run with its trace.
    pub fn replay(&self) -> String {
        let mut command = format!("mindoo-replica sim --seed {}", self.seed);
        if self.steps != Self::STEPS {
            command += &format!(" --steps {}", self.steps);
        }
        if let Some(plant) = self.plant {
            command += &format!(" --plant {}", plant.name());
        }
        command + " --trace"
    }
}

impl Plant {
    pub const ALL: [Plant; 1] = [Plant::CursorBeforeData];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Plant::CursorBeforeData => "cursor-before-data",
        }
    }
}

/// How a run went.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What was run.
    pub options: Options,
    /// What happened, in order, with the simulated time.
    pub trace: Vec<String>,
    /// Why the run failed, if it did.
    pub failure: Option<String>,
}

/// Runs one simulation on this thread.
pub fn run(options: &Options) -> Outcome {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    // Which of a watch channel's waiters wakes first, and which branch of
    // an unbiased select! is polled first, are tokio's random choices.
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(
        &options.seed.to_le_bytes(),
    ));
    let runtime = builder.build().expect("a current-thread runtime builds");
    let _inline = crate::blocking::inline_on_this_thread();
    // Built inside the runtime: its clock is the paused one.
    runtime.block_on(async { Sim::new(options).run().await })
}

/// The planted bug: cursor first, then, unless the power is cut between
/// the two writes, the entries.
struct CursorFirst {
    rng: Mutex<StdRng>,
    /// Set when the simulated power cut hit: the driver crashes the node.
    cut: Arc<AtomicBool>,
}

impl Hooks for CursorFirst {
    fn append(
        &self,
        inner: &dyn Store,
        entries: &[VerifiedEntry],
        cursor: Option<&CursorUpdate>,
    ) -> Result<Vec<Appended>, StoreError> {
        if cursor.is_none() || entries.is_empty() {
            return inner.append(entries, cursor);
        }
        inner.append(&[], cursor)?;
        let power_cut = self
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .random_bool(0.05);
        if power_cut {
            self.cut.store(true, Ordering::SeqCst);
            return Err(StoreError::Backend("simulated power cut".into()));
        }
        inner.append(entries, None)
    }
}

struct Node {
    name: String,
    /// What is on the node's disk.
    store: Arc<MemoryStore>,
    /// Set by the planted bug's power cut.
    power_cut: Arc<AtomicBool>,
    /// While up: its replica's workers.
    running: Option<Running>,
}

struct Running {
    cancel: CancellationToken,
    /// Its pull workers' statuses.
    board: StatusBoard,
    _tasks: Vec<AbortOnDropHandle<()>>,
}

struct Sim {
    options: Options,
    rng: StdRng,
    net: Arc<Net>,
    nodes: Vec<Node>,
    key: FingerprintKey,
    settings: watch::Sender<SyncSettings>,
    env: Env,
    start: tokio::time::Instant,
    trace: Vec<String>,
    /// Acknowledged entries that must survive.
    acked: BTreeSet<EntryId>,
    /// A copy of a node's disk, to restore it from later.
    backup: Option<(usize, MemoryStore)>,
    author: SigningKey,
    written: u64,
}

impl Sim {
    fn new(options: &Options) -> Self {
        let seed = options.seed;
        let mut rng = StdRng::seed_from_u64(seed);
        let key = FingerprintKey::new(rng.random());
        // Some runs reconcile periodically, others only when a cursor is
        // refused: cursor pull alone must be safe too.
        let reconcile_interval = rng
            .random_bool(0.5)
            .then(|| Duration::from_millis(rng.random_range(2_000..10_000)));
        let settings = SyncSettings {
            connect_timeout: Duration::from_secs(1),
            session_idle_timeout: Duration::from_secs(3),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            reconcile_interval,
            ..SyncSettings::default()
        };
        let start = tokio::time::Instant::now();
        let nodes = (0..NODES)
            .map(|i| Node {
                name: format!("n{i}"),
                store: Arc::new(MemoryStore::with_fingerprints(key.clone())),
                power_cut: Arc::new(AtomicBool::new(false)),
                running: None,
            })
            .collect();
        let max_delay = Duration::from_millis(rng.random_range(1..50));
        Self {
            options: options.clone(),
            net: Arc::new(Net::new(NODES, seed ^ 0x6e65_7477_6f72_6b00, max_delay)),
            nodes,
            key,
            settings: watch::channel(settings).0,
            env: Env::new(Arc::new(TokioClock(start)), seed ^ 0x656e_6769_6e65),
            start,
            trace: Vec::new(),
            acked: BTreeSet::new(),
            backup: None,
            author: SigningKey::from_bytes(&[9; 32]),
            written: 0,
            rng,
        }
    }

    fn log(&mut self, event: String) {
        let ms = self.start.elapsed().as_millis();
        self.trace.push(format!("[{ms:>7} ms] {event}"));
    }

    fn up(&self, i: usize) -> Option<Arc<Replica>> {
        self.net.up.lock().unwrap_or_else(|e| e.into_inner())[i].clone()
    }

    /// Starts node `i` on what its disk holds.
    fn start_node(&mut self, i: usize) {
        let node = &self.nodes[i];
        let store: Arc<dyn Store> = match self.options.plant {
            None => node.store.clone(),
            Some(Plant::CursorBeforeData) => Arc::new(Decorated {
                inner: node.store.clone(),
                hooks: CursorFirst {
                    rng: Mutex::new(StdRng::seed_from_u64(self.rng.random())),
                    cut: node.power_cut.clone(),
                },
            }),
        };
        let replica = Arc::new(Replica::new(
            store,
            NodeIdentity::new(node.name.clone()),
            Policy::default(),
            Limits::default(),
            1 << 20,
            Arc::new(Metrics::new()),
            CancellationToken::new(),
        ));
        let cancel = CancellationToken::new();
        let budget = ByteBudget::new(8 << 20);
        let board = StatusBoard::default();
        let shared = Shared::default();
        let tasks = (0..NODES)
            .filter(|&j| j != i)
            .map(|j| {
                let peer = SimPeer {
                    from: i,
                    to: j,
                    name: self.nodes[j].name.clone(),
                    net: self.net.clone(),
                };
                let puller = Puller {
                    local: replica.clone(),
                    peer: Arc::new(peer),
                    settings: self.settings.subscribe(),
                    budget: budget.for_peer(4 << 20),
                    shared: shared.clone(),
                    metrics: replica.metrics().sync.clone(),
                    status: board.slot(&self.nodes[j].name),
                    env: self.env.clone(),
                    cancel: cancel.clone(),
                };
                AbortOnDropHandle::new(tokio::spawn(puller.run()))
            })
            .collect();
        self.net.up.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(replica);
        self.nodes[i].running = Some(Running {
            cancel,
            board,
            _tasks: tasks,
        });
    }

    /// Node `i` stops at once, mid-whatever (its disk keeps what was
    /// committed).
    fn crash(&mut self, i: usize) {
        self.net.up.lock().unwrap_or_else(|e| e.into_inner())[i] = None;
        if let Some(running) = self.nodes[i].running.take() {
            running.cancel.cancel();
        }
    }

    /// Forgets acknowledged entries no disk holds any more.
    fn forget_lost(&mut self, why: &str) {
        let lost: Vec<EntryId> = self
            .acked
            .iter()
            .filter(|id| !self.nodes.iter().any(|n| held(&n.store, id)))
            .copied()
            .collect();
        for id in &lost {
            self.acked.remove(id);
        }
        if !lost.is_empty() {
            self.log(format!(
                "{} acknowledged entries lost with their only copy ({why})",
                lost.len()
            ));
        }
    }

    /// A hash of every node's log, in order.
    fn log_digest(&self) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new();
        for node in &self.nodes {
            let log = node
                .store
                .log_since(0, usize::MAX, None)
                .expect("a memory store reads its log");
            hasher.update(&(log.len() as u64).to_le_bytes());
            for record in log {
                hasher.update(&record.seq.to_le_bytes());
                hasher.update(&record.id.0);
            }
        }
        hasher.finalize()
    }

    /// Checks that node `i`'s cursors say nothing its disk does not hold.
    fn check_cursors(&self, i: usize) -> Result<(), String> {
        let store = &self.nodes[i].store;
        for (peer, record) in store.cursors().map_err(|e| e.to_string())? {
            let Some(j) = self.nodes.iter().position(|n| n.name == peer) else {
                continue;
            };
            let theirs = &self.nodes[j].store;
            if theirs.incarnation() != record.cursor.incarnation {
                continue;
            }
            let log = theirs
                .log_since(0, record.cursor.seq as usize, None)
                .map_err(|e| e.to_string())?;
            let missing = log.iter().filter(|r| !held(store, &r.id)).count();
            if missing > 0 {
                return Err(format!(
                    "{}'s cursor into {peer} is at seq {}, but {missing} entries of {peer}'s log up \
                     to there are not held",
                    self.nodes[i].name, record.cursor.seq
                ));
            }
        }
        Ok(())
    }

    async fn write(&mut self, i: usize) {
        let Some(replica) = self.up(i) else { return };
        let count = self.rng.random_range(1..=20);
        // From the seed, so that a replay writes the same entries.
        let entries: Vec<Entry> = (0..count as u64)
            .map(|k| {
                let mut ciphertext = [0u8; 64];
                self.rng.fill(&mut ciphertext[..]);
                let envelope = Envelope {
                    namespace: namespace(),
                    author: [0; 32],
                    created_ms: self.written + k,
                    kind: "doc_change".into(),
                    doc_id: format!("doc-{}", k % 7).into_bytes(),
                    deps: vec![],
                };
                Entry::create(envelope, &ciphertext, Some(&self.author))
            })
            .collect();
        let items = entries
            .iter()
            .map(|e| (Bytes::copy_from_slice(&e.id.0), e.data().clone()))
            .collect();
        self.written += count as u64;
        match replica.put(items).await {
            Ok(outcomes) => {
                let stored = outcomes
                    .iter()
                    .zip(&entries)
                    .filter(|(o, _)| matches!(o, PutOutcome::Stored | PutOutcome::Duplicate))
                    .map(|(_, e)| e.id)
                    .collect::<Vec<_>>();
                let n = stored.len();
                self.acked.extend(stored);
                self.log(format!("write {n} to n{i}: acknowledged"));
            }
            Err(e) => self.log(format!("write {count} to n{i}: refused ({e})")),
        }
    }

    async fn step(&mut self) -> Result<(), String> {
        // A node the planted bug's power cut hit goes down now.
        for i in 0..NODES {
            if self.nodes[i].power_cut.swap(false, Ordering::SeqCst) {
                self.crash(i);
                self.log(format!("n{i}: power cut between the cursor and the data"));
            }
        }
        let i = self.rng.random_range(0..NODES);
        match self.rng.random_range(0..100) {
            0..55 => self.write(i).await,
            55..65 => {
                let j = (i + self.rng.random_range(1..NODES)) % NODES;
                let link = (i.min(j), i.max(j));
                let cut = self
                    .net
                    .cut
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(link);
                if cut {
                    self.log(format!("cut n{}-n{}", link.0, link.1));
                }
            }
            65..75 => {
                let healed: Vec<(usize, usize)> = self
                    .net
                    .cut
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .drain()
                    .collect();
                if !healed.is_empty() {
                    self.log(format!("heal {} links", healed.len()));
                }
            }
            75..83 if self.nodes[i].running.is_some() => {
                self.crash(i);
                let held = self.nodes[i].store.stats().entries;
                self.log(format!("n{i}: crash, holding {held}"));
            }
            83..93 if self.nodes[i].running.is_none() => {
                if self.rng.random_bool(0.2) {
                    self.nodes[i].store =
                        Arc::new(MemoryStore::with_fingerprints(self.key.clone()));
                    self.log(format!("n{i}: restart with its disk lost"));
                    self.forget_lost("disk lost");
                } else {
                    let held = self.nodes[i].store.stats().entries;
                    self.log(format!("n{i}: restart, holding {held}"));
                }
                self.check_cursors(i)?;
                self.start_node(i);
            }
            93..96 => {
                self.backup = Some((i, self.nodes[i].store.restored_copy()));
                self.log(format!("n{i}: backup"));
            }
            96..100 => {
                if let Some((b, copy)) = self.backup.take() {
                    self.crash(b);
                    self.nodes[b].store = Arc::new(copy);
                    self.log(format!("n{b}: restored from its backup"));
                    self.forget_lost("restore");
                    self.check_cursors(b)?;
                    self.start_node(b);
                }
            }
            _ => {}
        }
        let pause = Duration::from_millis(self.rng.random_range(1..300));
        tokio::time::sleep(pause).await;
        Ok(())
    }

    async fn run(mut self) -> Outcome {
        let reconcile = self.settings.borrow().reconcile_interval;
        let delay = self.net.max_delay;
        self.log(format!(
            "seed {}: {NODES} replicas, hops up to {delay:?}, periodic reconciliation {reconcile:?}",
            self.options.seed
        ));
        for i in 0..NODES {
            self.start_node(i);
        }
        let mut failure = None;
        for _ in 0..self.options.steps {
            if let Err(e) = self.step().await {
                failure = Some(e);
                break;
            }
        }
        if failure.is_none() {
            failure = self.settle().await.err();
        }
        for i in 0..NODES {
            self.crash(i);
        }
        let logs = self.log_digest();
        self.log(format!(
            "the replicas' logs, in order, hash to {}",
            &logs.to_hex()[..16]
        ));
        Outcome {
            options: self.options.clone(),
            trace: self.trace,
            failure,
        }
    }

    /// No more faults: links heal, every node runs; then every node must
    /// come to hold exactly what was acknowledged and not lost.
    async fn settle(&mut self) -> Result<(), String> {
        self.net
            .cut
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for i in 0..NODES {
            self.nodes[i].power_cut.store(false, Ordering::SeqCst);
            if self.nodes[i].running.is_none() {
                self.check_cursors(i)?;
                self.start_node(i);
            }
        }
        let (written, acked) = (self.written, self.acked.len());
        self.log(format!(
            "faults stop: {written} written, {acked} acknowledged and kept"
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            let counts: Vec<(u64, u64)> = self
                .nodes
                .iter()
                .map(|n| (n.store.stats().entries, n.store.stats().head_seq))
                .collect();
            let agreed = self
                .nodes
                .iter()
                .all(|n| n.store.stats().entries == self.acked.len() as u64)
                && self
                    .acked
                    .iter()
                    .all(|id| self.nodes.iter().all(|n| held(&n.store, id)));
            if agreed {
                self.log(format!(
                    "converged: every replica holds the {acked} entries"
                ));
                for i in 0..NODES {
                    self.check_cursors(i)?;
                }
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let workers: Vec<String> = self
                    .nodes
                    .iter()
                    .filter_map(|n| Some((n, n.running.as_ref()?)))
                    .flat_map(|(n, r)| {
                        r.board.snapshot().into_iter().map(move |s| {
                            format!(
                                "  {} from {}: {} cursor {} of {}; {}",
                                n.name,
                                s.peer,
                                s.state,
                                s.cursor_seq,
                                s.peer_head_seq,
                                s.last_error.unwrap_or_default()
                            )
                        })
                    })
                    .collect();
                return Err(format!(
                    "no convergence within 600 s of healing: replicas hold {counts:?} entries, \
                     {acked} were acknowledged and kept; pull workers:\n{}",
                    workers.join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn namespace() -> Namespace {
    Namespace::new("sim", "db").expect("a valid namespace")
}

fn held(store: &MemoryStore, id: &EntryId) -> bool {
    store
        .contains(&namespace(), std::slice::from_ref(id))
        .is_ok_and(|h| h[0])
}

#[cfg(test)]
mod tests;
