//! Power loss, simulated for real: a replica process runs on a filesystem
//! (`tests/powerloss/lossyfs.py`, FUSE) that keeps what was written but not
//! fsynced in memory and drops it when the power is cut. Writers stream
//! entries and note every acknowledgement; the power is cut at a random
//! moment and the replica killed with it; a new replica opens what is left.
//! Every acknowledged entry must be there and read back intact. The same
//! with `storage.sync_writes = false` must lose acknowledged entries, or the
//! test could not tell.
//!
//! Group commit is checked the same way with many writers and `kill -9`.
//!
//! `MINDOO_POWERLOSS_CUTS=N` runs N cuts with fsync on (the suite runs a
//! few; `make powerloss` runs hundreds).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mindoo_replica::client::StoreClient;
use mindoo_replica::entry::{Entry, EntryId};
use mindoo_replica::tools::child::ReplicaProcess;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness::*;

const EXE: &str = env!("CARGO_BIN_EXE_mindoo-replica");
const WRITERS: usize = 4;
const BATCH: usize = 20;

/// The layer's interpreter, set up by `tests/powerloss/setup.sh` (which
/// `make test` runs through `.ci/deps`).
fn python() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let python = Path::new(&home).join(".cache/mindoo-replica/powerloss-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash tests/powerloss/setup.sh` first (make test does)",
        python.display()
    );
    python
}

fn layer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powerloss/lossyfs.py")
}

/// The filesystem layer, mounted.
struct Layer {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Layer {
    async fn mount(backing: &Path, mountpoint: &Path) -> Layer {
        let mut child = Command::new(python())
            .arg(layer_script())
            .arg(backing)
            .arg(mountpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start lossyfs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("lossyfs did not mount within 30 s")
            .unwrap();
        assert_eq!(first.as_deref(), Some("lossyfs: mounted"), "lossyfs said");
        Layer { child, lines }
    }

    /// Cuts the power: nothing more reaches the backing directory, and
    /// what was not fsynced is gone. Returns the layer's account of it.
    async fn cut(mut self) -> String {
        let pid = self.child.id().expect("lossyfs runs") as i32;
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
        let said = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("lossyfs did not report the cut")
            .unwrap()
            .unwrap_or_default();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("lossyfs did not exit after the cut")
            .unwrap();
        assert!(status.success(), "lossyfs exited {status}");
        said
    }
}

/// What one cut showed.
struct Cut {
    acknowledged: usize,
    lost: usize,
    after_ms: u128,
    layer: String,
}

/// How the replica stops.
#[derive(Clone, Copy)]
enum Stop {
    /// The power is cut under it (on the layer), and it is killed. With
    /// `small_memtables`, memtables of 1 MiB flush to table files and the
    /// WAL switches files while the writers run, so the cut can fall in
    /// the middle of a flush.
    PowerCut {
        sync_writes: bool,
        small_memtables: bool,
    },
    /// `kill -9`, on a plain directory: the OS keeps what was written.
    Kill,
}

/// `writers` stream entries into a replica until it is stopped `after` in,
/// as `stop` says; then a replica opens what is left and every
/// acknowledged entry is looked for.
async fn one_cut(stop: Stop, writers: usize, after: Duration) -> Cut {
    let dir = tempfile::tempdir().unwrap();
    let (backing, mountpoint) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mountpoint).unwrap();
    let (layer, data, sync, small_memtables) = match stop {
        Stop::PowerCut {
            sync_writes,
            small_memtables,
        } => (
            Some(Layer::mount(&backing, &mountpoint).await),
            mountpoint.join("db"),
            sync_writes,
            small_memtables,
        ),
        Stop::Kill => (None, backing.join("db"), true, false),
    };
    let sync = sync.to_string();
    let mut env = vec![("MINDOO_REPLICA__STORAGE__SYNC_WRITES", sync.as_str())];
    if small_memtables {
        env.push(("MINDOO_REPLICA__STORAGE__WRITE_BUFFER_MB", "1"));
    }
    let replica = ReplicaProcess::spawn(EXE.as_ref(), &data, false, &env)
        .await
        .unwrap();

    let acked: Arc<Mutex<HashMap<EntryId, Entry>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let mut client = StoreClient::connect(&replica.grpc.to_string())
            .await
            .unwrap();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let batch = mindoo_replica::fixtures::sample_entries(&ns(), &author(), BATCH, 256);
                // Any error ends the writer: the power is gone.
                let Ok(outcomes) = client.put(&batch).await else {
                    return;
                };
                assert_eq!(outcomes.len(), batch.len());
                let mut acked = acked.lock().unwrap();
                acked.extend(batch.into_iter().map(|e| (e.id, e)));
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(after).await;
    let layer_said = match layer {
        Some(layer) => layer.cut().await,
        None => "killed with SIGKILL".into(),
    };
    replica.kill().await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let after_ms = started.elapsed().as_millis();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(!acked.is_empty(), "nothing was acknowledged before the cut");

    // What is left, opened straight from the backing directory.
    let replica = ReplicaProcess::spawn(EXE.as_ref(), &backing.join("db"), false, &[])
        .await
        .expect("the store opens after the cut");
    let mut client = StoreClient::connect(&replica.grpc.to_string())
        .await
        .unwrap();
    let ids: Vec<EntryId> = acked.keys().copied().collect();
    let mut lost = 0;
    for chunk in ids.chunks(1000) {
        let missing = client.missing(&ns(), chunk).await.unwrap();
        lost += missing.len();
        let held: Vec<EntryId> = chunk
            .iter()
            .filter(|id| !missing.contains(id))
            .copied()
            .collect();
        for entry in client.get(&ns(), &held).await.unwrap() {
            assert_eq!(
                entry.data(),
                acked[&entry.id].data(),
                "entry {} reads back changed",
                entry.id
            );
        }
    }
    replica.stop().await.unwrap();
    Cut {
        acknowledged: acked.len(),
        lost,
        after_ms,
        layer: layer_said,
    }
}

fn cuts() -> usize {
    std::env::var("MINDOO_POWERLOSS_CUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_keeps_every_acknowledged_entry_when_writes_are_synced() {
    let (mut acknowledged, mut lost) = (0, 0);
    let total = cuts();
    for i in 0..total {
        let seed = rand::random::<u64>();
        let after = Duration::from_millis(300 + seed % 1200);
        // Every other cut with memtables that flush while the writers run.
        let small_memtables = i % 2 == 1;
        let stop = Stop::PowerCut {
            sync_writes: true,
            small_memtables,
        };
        let cut = one_cut(stop, WRITERS, after).await;
        println!(
            "powerloss: cut {} of {total} after {} ms (sync_writes = true{}): {} acknowledged, {} lost; {}",
            i + 1,
            cut.after_ms,
            if small_memtables {
                ", 1 MiB memtables"
            } else {
                ""
            },
            cut.acknowledged,
            cut.lost,
            cut.layer
        );
        acknowledged += cut.acknowledged;
        lost += cut.lost;
    }
    println!(
        "powerloss: {total} cuts with sync_writes = true: {acknowledged} acknowledged entries checked, {lost} lost"
    );
    assert_eq!(lost, 0, "acknowledged entries lost with fsync on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_loses_acknowledged_entries_when_writes_are_not_synced() {
    let cut = one_cut(
        Stop::PowerCut {
            sync_writes: false,
            small_memtables: false,
        },
        WRITERS,
        Duration::from_millis(800),
    )
    .await;
    println!(
        "powerloss: one cut after {} ms (sync_writes = false): {} acknowledged, {} lost; {}",
        cut.after_ms, cut.acknowledged, cut.lost, cut.layer
    );
    assert!(
        cut.lost > 0,
        "nothing lost without fsync: the layer did not drop unsynced writes"
    );
}

/// Group commit is safe: many writers share each fsync, and a `kill -9` at
/// a random moment loses none of what they were told is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_group_commits_keeps_every_acknowledged_entry() {
    let after = Duration::from_millis(300 + rand::random::<u64>() % 1200);
    let cut = one_cut(Stop::Kill, 16, after).await;
    println!(
        "kill -9 after {} ms, 16 writers: {} acknowledged, {} lost",
        cut.after_ms, cut.acknowledged, cut.lost
    );
    assert_eq!(cut.lost, 0, "acknowledged entries lost on kill -9");
}
