//! RocksDB-only behaviour: schema upgrades, what existence checks read, and
//! the errors the engine really returns when a resource runs out.

use super::*;
use crate::store::conformance::{doc_entry, entry_with};
use crate::store::{DocRange, scan_doc_records};
use rocksdb::Options;

fn entry(ns: &Namespace, n: u32) -> VerifiedEntry {
    entry_with(ns, n, &[n as u8; 600])
}

/// Bytes this thread has read through read calls, page cache included.
fn thread_rchar() -> u64 {
    std::fs::read_to_string("/proc/thread-self/io")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn existence_checks_do_not_read_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let config = RocksConfig::new(dir.path());
    let ns = Namespace::new("t", "d").unwrap();
    let big = |n: u32| entry_with(&ns, n, &vec![n as u8; 64 << 10]);
    let batch: Vec<_> = (0..200).map(big).collect();
    let ids: Vec<EntryId> = batch.iter().map(|e| e.id).collect();
    {
        let store = RocksStore::open(&config).unwrap();
        store.append(&batch, None).unwrap();
        store.flush().unwrap();
    }
    // Reopened: every body is in a blob file, none in a memtable.
    let store = RocksStore::open(&config).unwrap();
    let body_bytes = 200 * (64 << 10) as u64;
    let before = thread_rchar();
    assert!(store.contains(&ns, &ids).unwrap().into_iter().all(|h| h));
    assert_eq!(store.list_ids(&ns, None, 500).unwrap().len(), 200);
    assert!(
        store
            .append(&batch, None)
            .unwrap()
            .iter()
            .all(|a| *a == Appended::Duplicate)
    );
    let read = thread_rchar() - before;
    assert!(
        read < body_bytes / 10,
        "existence checks read {read} bytes; the bodies are {body_bytes}"
    );
    // Reading the bodies themselves does read them: the measure works.
    let before = thread_rchar();
    assert_eq!(store.get(&ns, &ids).unwrap().len(), 200);
    assert!(thread_rchar() - before >= body_bytes);
}

fn seqs(records: &[LogRecord]) -> Vec<Seq> {
    records.iter().map(|r| r.seq).collect()
}

#[test]
fn a_database_from_before_the_namespace_index_is_indexed_on_open() {
    // Left as the release before the index left it, with a backfill that
    // stopped part way, and with the index dropped by hand (to run that
    // release) but its mark left behind.
    for (partial, keep_mark) in [(None, false), (Some(37), false), (None, true)] {
        let dir = tempfile::tempdir().unwrap();
        let config = RocksConfig::new(dir.path());
        let spaces: Vec<Namespace> = (0..5)
            .map(|i| Namespace::new("t", format!("d{i}")).unwrap())
            .collect();
        let batch: Vec<_> = (0..100)
            .map(|i| entry(&spaces[i as usize % 5], i))
            .collect();
        let (incarnation, at_64) = {
            let store = RocksStore::open(&config).unwrap();
            store.append(&batch, None).unwrap();
            store.flush().unwrap();
            (store.incarnation(), store.log_at(64).unwrap().unwrap())
        };
        nslog::remove_index(dir.path(), partial, keep_mark);
        if partial.is_none() {
            let families = DB::list_cf(&Options::default(), dir.path()).unwrap();
            assert!(!families.iter().any(|f| f == CF_NSLOG), "{families:?}");
        }

        let store = RocksStore::open(&config).unwrap();
        // The log is unchanged: a cursor from before still names its entry.
        assert_eq!(store.incarnation(), incarnation);
        assert_eq!(store.stats().head_seq, 100);
        assert_eq!(store.log_at(64).unwrap(), Some(at_64));
        let whole = store.log_since(0, 1000, Some(usize::MAX)).unwrap();
        let filtered = |spaces: &[Namespace], after: Seq| -> Vec<LogRecord> {
            whole
                .iter()
                .filter(|r| r.seq > after && spaces.contains(&r.namespace))
                .cloned()
                .collect()
        };
        for ns in &spaces {
            let got = store
                .log_since_in(std::slice::from_ref(ns), 0, 1000, Some(usize::MAX))
                .unwrap();
            let want = filtered(std::slice::from_ref(ns), 0);
            assert_eq!(want.len(), 20);
            assert_eq!(seqs(&got), seqs(&want), "{partial:?} {keep_mark} {ns}");
            assert_eq!(got, want, "{partial:?} {keep_mark} {ns}");
        }
        let two = [spaces[1].clone(), spaces[3].clone()];
        let got = store
            .log_since_in(&two, 64, 1000, Some(usize::MAX))
            .unwrap();
        let want = filtered(&two, 64);
        assert_eq!(seqs(&got), seqs(&want), "{partial:?} {keep_mark}");
        assert_eq!(got, want, "{partial:?} {keep_mark}");
        // Entries stored from now on are indexed as they are appended.
        assert_eq!(
            store.append(&[entry(&spaces[2], 1000)], None).unwrap(),
            [Appended::Stored(101)]
        );
        let got = store.log_since_in(&spaces[2..3], 97, 10, None).unwrap();
        assert_eq!(seqs(&got), [98, 101]);
        // Marked complete: the next open does not index again.
        let meta = |key: &[u8]| store.db.get_cf(store.cf(CF_META), key).unwrap();
        assert_eq!(meta(nslog::KEY_BUILT).as_deref(), Some(&[1u8][..]));
        assert_eq!(meta(b"nslog_backfill_at"), None);
    }
}

#[test]
fn usage_survives_a_reopen_and_a_database_from_before_it_is_counted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = RocksConfig::new(dir.path());
    let (t, u) = (
        Namespace::new("t", "d").unwrap(),
        Namespace::new("u", "d").unwrap(),
    );
    let batch: Vec<_> = (0..100)
        .map(|i| entry(if i % 4 == 0 { &u } else { &t }, i))
        .collect();
    let size = batch[0].data.len() as u64;
    let want = |n: u64| Usage {
        entries: n,
        bytes: n * size,
    };
    {
        let store = RocksStore::open(&config).unwrap();
        store.append(&batch[..60], None).unwrap();
        store.append(&batch[60..], None).unwrap();
    }
    let store = RocksStore::open(&config).unwrap();
    assert_eq!((store.usage("t"), store.usage("u")), (want(75), want(25)));
    // As the release before the counts left it; then with a count that
    // stopped after seq 40 (30 of t's, 10 of u's).
    for partial in [false, true] {
        let meta = store.cf(CF_META);
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_cf(meta, b"usage_counted");
        batch.delete_cf(meta, b"usage/t");
        batch.delete_cf(meta, b"usage/u");
        if partial {
            batch.put_cf(meta, b"usage_backfill_at", 40u64.to_be_bytes());
            let value = |n: u64| [n.to_be_bytes(), (n * size).to_be_bytes()].concat();
            batch.put_cf(meta, b"usage/t", value(30));
            batch.put_cf(meta, b"usage/u", value(10));
        }
        store.db.write(batch).unwrap();
        let counted = usage::ensure_counted(&store.db).unwrap();
        assert_eq!(counted.get("t"), Some(&want(75)), "partial: {partial}");
        assert_eq!(counted.get("u"), Some(&want(25)), "partial: {partial}");
    }
}

#[test]
fn the_document_index_is_built_for_a_store_written_without_it_and_kept_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::new("t", "d").unwrap();
    let (plain, mut indexing) = (RocksConfig::new(dir.path()), RocksConfig::new(dir.path()));
    indexing.index_documents = true;
    let docs: [&[u8]; 3] = [b"a", b"bb", b"c"];
    let append = |store: &RocksStore, from: u64, to: u64| {
        let batch: Vec<_> = (from..to)
            .map(|n| doc_entry(&ns, docs[n as usize % 3], "doc_change", n, vec![]))
            .chain([entry(&ns, to as u32)])
            .collect();
        store.append(&batch, None).unwrap();
    };
    let whole = || DocRange::default();
    // Written without the index: a device store from before it.
    append(&RocksStore::open(&plain).unwrap(), 0, 30);
    // A device opens it: the index is built from the log.
    let store = RocksStore::open(&indexing).unwrap();
    let read_before = store.log_records_read();
    let records = store.doc_records(&ns, whole(), 1000).unwrap();
    assert_eq!(
        store.log_records_read(),
        read_before,
        "read from the index, not the log"
    );
    assert_eq!(records.len(), 30);
    assert_eq!(
        records,
        scan_doc_records(&store, &ns, whole(), 1000).unwrap()
    );
    append(&store, 30, 33);
    drop(store);
    // Opened once without keeping the index, then with it again: what
    // was written in between is indexed too.
    append(&RocksStore::open(&plain).unwrap(), 33, 40);
    let store = RocksStore::open(&indexing).unwrap();
    let records = store.doc_records(&ns, whole(), 1000).unwrap();
    assert_eq!(records.len(), 40);
    assert_eq!(
        records,
        scan_doc_records(&store, &ns, whole(), 1000).unwrap()
    );
}

#[test]
fn a_version_1_database_is_upgraded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::new("t", "d").unwrap();
    let batch: Vec<_> = (0..50).map(|i| entry(&ns, i)).collect();
    {
        // The version-1 layout: bodies keyed by ns ‖ id, no index.
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(
            &opts,
            dir.path(),
            [CF_ENTRIES_V1, CF_LOG, CF_META, CF_CURSORS],
        )
        .unwrap();
        let cf = |n| db.cf_handle(n).unwrap();
        for (i, e) in batch.iter().enumerate() {
            let key = entry_key(&e.namespace, &e.id);
            db.put_cf(cf(CF_ENTRIES_V1), &key, &e.data).unwrap();
            db.put_cf(cf(CF_LOG), (i as u64 + 1).to_be_bytes(), &key)
                .unwrap();
        }
        let meta = cf(CF_META);
        db.put_cf(meta, KEY_SCHEMA, 1u32.to_be_bytes()).unwrap();
        db.put_cf(meta, KEY_INCARNATION, [9u8; 16]).unwrap();
        db.put_cf(meta, KEY_HEAD, 50u64.to_be_bytes()).unwrap();
        db.put_cf(meta, KEY_COUNT, 50u64.to_be_bytes()).unwrap();
    }
    let store = RocksStore::open(&RocksConfig::new(dir.path())).unwrap();
    assert_eq!(store.incarnation(), Incarnation([9; 16]));
    let ids: Vec<EntryId> = batch.iter().map(|e| e.id).collect();
    assert!(store.contains(&ns, &ids).unwrap().into_iter().all(|h| h));
    let got = store.get(&ns, &ids).unwrap();
    assert!(
        got.iter()
            .zip(&batch)
            .all(|(g, e)| g.as_ref() == Some(&e.data))
    );
    let log = store.log_since(0, 100, Some(usize::MAX)).unwrap();
    assert_eq!(log.len(), 50);
    assert!(
        log.iter()
            .zip(&batch)
            .all(|(r, e)| r.id == e.id && r.data.as_ref() == Some(&e.data))
    );
    assert_eq!(store.list_ids(&ns, None, 100).unwrap().len(), 50);
    assert_eq!(
        store.append(&batch[..1], None).unwrap(),
        [Appended::Duplicate]
    );
    assert_eq!(
        store.append(&[entry(&ns, 99)], None).unwrap(),
        [Appended::Stored(51)]
    );
    let version = store.db.get_cf(store.cf(CF_META), KEY_SCHEMA).unwrap();
    assert_eq!(version.unwrap(), SCHEMA_VERSION.to_be_bytes());
    drop(store);
    let families = DB::list_cf(&Options::default(), dir.path()).unwrap();
    assert!(!families.iter().any(|f| f == CF_ENTRIES_V1), "{families:?}");
}

// What the store returns when the engine fails: each error below is
// produced for real (another process holding the lock, a full filesystem,
// no descriptor left), never by handing `classify` a made-up message. A
// second open in this very process is `rocks_reports_a_locked_database`
// in the conformance suite.

#[test]
fn a_database_open_in_another_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let config = RocksConfig::new(dir.path());
    let mut holder = ChildProcess::spawn("hold", dir.path());
    assert_eq!(holder.report(), "open");
    let err = RocksStore::open(&config)
        .err()
        .expect("a database another process holds does not open");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
    // The lock goes with the process that held it.
    holder.finish();
    let store = RocksStore::open(&config).unwrap();
    assert_eq!(store.stats(), StoreStats::default());
}

#[test]
fn a_full_disk_is_disk_full_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(dir.path(), "size=4m");
    let config = RocksConfig::new(dir.path());
    let ns = Namespace::new("t", "d").unwrap();
    let big = |n: u32| entry_with(&ns, n, &vec![n as u8; 64 << 10]);
    let store = RocksStore::open(&config).unwrap();
    let (acked, err) = append_until_refused(&store, big, 1024);
    assert!(matches!(err, StoreError::DiskFull(_)), "{err:?}");
    assert!(acked > 0, "the 4 MiB filesystem took no batch at all");
    // The refused batch did not count.
    assert_eq!(store.stats().entries, u64::from(acked));
    assert_eq!(store.stats().head_seq, u64::from(acked));
    drop(store);
    // With room again, the database holds exactly what was acknowledged.
    disk.resize("size=64m");
    let store = RocksStore::open(&config).unwrap();
    assert_holds_exactly(&store, &ns, acked, big);
}

#[test]
fn running_out_of_descriptors_is_out_of_files_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = ChildProcess::spawn("out_of_files", dir.path());
    let report = child.report();
    child.finish();
    let (acked, err) = report.split_once(' ').expect("`acked error`");
    let acked: u32 = acked.parse().unwrap();
    assert!(err.starts_with("OutOfFiles("), "{err}");
    assert!(acked > 0, "no batch was stored before the limit: {err}");
    let ns = Namespace::new("t", "d").unwrap();
    let store = RocksStore::open(&RocksConfig::new(dir.path())).unwrap();
    assert_holds_exactly(&store, &ns, acked, |n| out_of_files_entry(&ns, n));
}

/// Appends batches of 8 entries `entry(0..)` until the store refuses one;
/// the entries acknowledged before it, and the error.
fn append_until_refused(
    store: &RocksStore,
    entry: impl Fn(u32) -> VerifiedEntry,
    at_most: u32,
) -> (u32, StoreError) {
    let mut acked = 0;
    loop {
        assert!(acked < at_most, "{acked} entries stored, none refused");
        let batch: Vec<_> = (acked..acked + 8).map(&entry).collect();
        match store.append(&batch, None) {
            Ok(out) => {
                let stored = (acked + 1..=acked + 8).map(|s| Appended::Stored(s.into()));
                assert!(out.iter().copied().eq(stored), "{out:?} after {acked}");
                acked += 8;
            }
            Err(e) => return (acked, e),
        }
    }
}

/// The store holds `entry(0..acked)`, byte for byte, at seqs 1..=acked,
/// nothing of the batch refused after them, and numbers the next append
/// right after them.
fn assert_holds_exactly(
    store: &RocksStore,
    ns: &Namespace,
    acked: u32,
    entry: impl Fn(u32) -> VerifiedEntry,
) {
    let held: Vec<_> = (0..acked).map(&entry).collect();
    let ids: Vec<EntryId> = held.iter().map(|e| e.id).collect();
    assert_eq!(
        store.stats(),
        StoreStats {
            head_seq: acked.into(),
            entries: acked.into()
        }
    );
    let got = store.get(ns, &ids).unwrap();
    for (n, (got, e)) in got.iter().zip(&held).enumerate() {
        assert_eq!(got.as_ref(), Some(&e.data), "entry {n}");
    }
    let log = store.log_since(0, usize::MAX, None).unwrap();
    assert!(log.iter().map(|r| r.id).eq(ids.iter().copied()));
    let refused: Vec<_> = (acked..acked + 8).map(&entry).collect();
    let refused_ids: Vec<EntryId> = refused.iter().map(|e| e.id).collect();
    assert_eq!(store.contains(ns, &refused_ids).unwrap(), [false; 8]);
    let out = store.append(&refused, None).unwrap();
    assert_eq!(out[0], Appended::Stored(u64::from(acked) + 1));
}

/// A tmpfs mounted over a directory, unmounted however the test ends.
struct Tmpfs(std::ffi::CString);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Self {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(
            uid, 0,
            "this test mounts a small tmpfs to fill it and needs root (CI and the dev \
             containers run as root); it runs as uid {uid}"
        );
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let tmpfs = Self(path);
        tmpfs.call(0, options).unwrap_or_else(|e| {
            panic!(
                "mounting a tmpfs ({options}) at {}: {e}; this test needs to mount one \
                 (CAP_SYS_ADMIN, not denied by seccomp or a user namespace)",
                dir.display()
            )
        });
        tmpfs
    }

    /// Changes the size of the mounted filesystem, keeping its files.
    fn resize(&self, options: &str) {
        self.call(libc::MS_REMOUNT, options)
            .unwrap_or_else(|e| panic!("remounting the tmpfs with {options}: {e}"));
    }

    fn call(&self, flags: libc::c_ulong, options: &str) -> std::io::Result<()> {
        let options = std::ffi::CString::new(options).unwrap();
        // SAFETY: every pointer is a valid NUL-terminated string for the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                self.0.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                options.as_ptr().cast(),
            )
        };
        match rc {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // SAFETY: a valid NUL-terminated path; a lazy unmount has no other
        // preconditions.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

/// What [`child_process`] does, and where.
const CHILD_TASK: &str = "MINDOO_ROCKS_TEST_CHILD_TASK";
const CHILD_DIR: &str = "MINDOO_ROCKS_TEST_CHILD_DIR";
/// Marks the lines a child reports on; the test harness prints others.
const REPORT: &str = "child-report: ";

/// This test binary, run again to do one of [`child_process`]'s tasks:
/// a lock held by another process, or a limit on descriptors that must not
/// touch the tests running in this one. Killed if the test ends first.
struct ChildProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl ChildProcess {
    fn spawn(task: &str, dir: &Path) -> Self {
        use std::io::BufRead;
        let module = module_path!().split_once("::").unwrap().1;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{module}::child_process")])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_TASK, task)
            .env(CHILD_DIR, dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The child's next report, within a minute.
    fn report(&mut self) -> String {
        loop {
            match self.lines.recv_timeout(std::time::Duration::from_secs(60)) {
                // The harness may have begun a line of its own.
                Ok(line) => match line.split_once(REPORT) {
                    Some((_, report)) => return report.to_owned(),
                    None => self.seen.push(line),
                },
                Err(e) => panic!(
                    "the child process reported nothing ({e}); its output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Closes the child's stdin (its signal to end) and waits for it to
    /// succeed.
    fn finish(&mut self) {
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the child process failed: {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child process did not end"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The entries the out-of-files child appends.
fn out_of_files_entry(ns: &Namespace, n: u32) -> VerifiedEntry {
    entry_with(ns, n, &vec![n as u8; 8 << 10])
}

/// Not a test of its own: the body of the processes [`ChildProcess`]
/// starts, which does nothing unless started so. Reports on stdout, then
/// waits for stdin to close.
#[test]
#[ignore = "run in a child process by the tests above"]
fn child_process() {
    use std::io::Read;
    let (Ok(task), Some(dir)) = (std::env::var(CHILD_TASK), std::env::var_os(CHILD_DIR)) else {
        return;
    };
    let mut config = RocksConfig::new(dir);
    match task.as_str() {
        "hold" => {
            let _store = RocksStore::open(&config).unwrap();
            println!("{REPORT}open");
            std::io::stdin().read_to_end(&mut Vec::new()).unwrap();
        }
        "out_of_files" => {
            // Small memtables: new WAL, table and blob files every few
            // batches.
            config.write_buffer_bytes = 256 << 10;
            let store = RocksStore::open(&config).unwrap();
            let ns = Namespace::new("t", "d").unwrap();
            // Two descriptors more than are open now.
            let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
            let limit = libc::rlimit {
                rlim_cur: open + 2,
                rlim_max: open + 2,
            };
            // SAFETY: setrlimit only reads `limit`.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
            let (acked, err) = append_until_refused(&store, |n| out_of_files_entry(&ns, n), 4096);
            println!("{REPORT}{acked} {err:?}");
            std::io::stdin().read_to_end(&mut Vec::new()).unwrap();
        }
        other => panic!("no child task {other}"),
    }
}

/// A store on tmpfs (which takes direct I/O only on recent kernels) flushes
/// and reads back what it flushed, whichever way the probe decided.
#[test]
fn a_store_on_tmpfs_flushes_and_reads_back() {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "this test needs a tmpfs at /dev/shm");
    let dir = tempfile::tempdir_in(shm).unwrap();
    let config = RocksConfig::new(dir.path());
    let ns = Namespace::new("t", "d").unwrap();
    let batch: Vec<_> = (0..100).map(|i| entry(&ns, i)).collect();
    let ids: Vec<EntryId> = batch.iter().map(|e| e.id).collect();
    {
        let store = RocksStore::open(&config).unwrap();
        assert_eq!(store.direct_io(), direct::supported(dir.path()));
        store.append(&batch, None).unwrap();
        store.flush().unwrap();
        store.append(&[entry(&ns, 100)], None).unwrap();
    }
    let store = RocksStore::open(&config).unwrap();
    assert_eq!(store.get(&ns, &ids).unwrap().len(), 100);
    assert_eq!(store.stats().head_seq, 101);
}

/// A byte flipped in a blob file on disk is found by a scrub, for that
/// entry alone; the same store unflipped has no findings.
#[test]
fn scrub_finds_a_body_flipped_on_disk() {
    use crate::store::scrub::scrub_all;
    let dir = tempfile::tempdir().unwrap();
    let config = RocksConfig::new(dir.path());
    let ns = Namespace::new("t", "d").unwrap();
    let marked = |i: u32| -> Vec<u8> { format!("entry-{i:05}-").repeat(40).into_bytes() };
    let batch: Vec<_> = (0..500).map(|i| entry_with(&ns, i, &marked(i))).collect();
    let scrub = |store: &RocksStore| {
        let totals = scrub_all(store, 64, |_| {}).unwrap();
        (totals.checked, totals.findings)
    };
    {
        let store = RocksStore::open(&config).unwrap();
        store.append(&batch, None).unwrap();
        store.flush().unwrap();
        let (checked, findings) = scrub(&store);
        assert_eq!((checked, findings.len()), (500, 0), "{findings:?}");
    }
    let blob = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "blob"))
        .expect("bodies are in a blob file");
    let mut bytes = std::fs::read(&blob).unwrap();
    let needle = marked(321);
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("entry 321's ciphertext is in the blob file");
    bytes[at + 100] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();

    let store = RocksStore::open(&config).unwrap();
    let (checked, findings) = scrub(&store);
    assert_eq!(checked, 500);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].id, batch[321].id);
    assert_eq!(findings[0].seq, 322);
}
