#!/usr/bin/env bash
# Self-test of lossyfs.py, the power-cut filesystem under the power-loss test,
# without the database: it mounts lossyfs over a temporary directory, writes
# files through it (some fsynced, some not, some renamed), checks that reads
# through the mount see every byte, cuts the power (SIGUSR1) while one process
# holds files open and another appends and fsyncs, and then checks the backing
# directory: exactly the fsynced bytes are there, nothing else (for the
# appender: every acknowledged byte). It also runs an append+fsync
# workload, threads writing at once and SQLite transactions through the mount,
# prints their rates and checks that all of their fsynced data survived.
#
# Usage: bash tests/powerloss/selftest.sh    (after tests/powerloss/setup.sh)
#   PY=python-with-mfusepy  LOSSYFS=path/to/lossyfs.py  to test another copy.
# Prints one line per check and "selftest: N passed, M failed"; exits 1 on
# any failure.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-$HOME/.cache/mindoo-replica/powerloss-venv/bin/python}
LOSSYFS=${LOSSYFS:-$here/lossyfs.py}
[[ -x $PY ]] || { echo "selftest: $PY is missing: run tests/powerloss/setup.sh first" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/lossyfs-selftest.XXXXXX")
back=$work/backing mnt=$work/mnt
mkdir -p "$back" "$mnt"
fs_pid="" holder_pid="" hammer_pid=""
cleanup() {
  [[ -n $holder_pid ]] && kill -9 "$holder_pid" 2>/dev/null
  [[ -n $hammer_pid ]] && kill -9 "$hammer_pid" 2>/dev/null
  [[ -n $fs_pid ]] && kill -TERM "$fs_pid" 2>/dev/null && sleep 1
  if grep -q " $mnt fuse" /proc/self/mounts; then
    umount -l "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT

results=$work/results
: >"$results"
ok() { echo "ok    $*" | tee -a "$results"; }
bad() { echo "FAIL  $*" | tee -a "$results"; }

# The client: writes through the mount and checks what it reads, either
# through the mount or, after the cut, in the backing directory.
cat >"$work/client.py" <<'EOF'
import errno, os, random, sqlite3, sys, threading, time

def blob(tag, n):
    return random.Random(tag).randbytes(n)

def check(desc, cond, detail=""):
    print(("ok    " if cond else "FAIL  ") + desc + ("" if cond else f": {detail}"), flush=True)

def write(path, parts, sync_after=(), mode="wb"):
    with open(path, mode, buffering=0) as f:
        for i, p in enumerate(parts):
            f.write(p)
            if i in sync_after:
                os.fsync(f.fileno())

def content(path):
    with open(path, "rb") as f:
        return f.read()

def same(path, want):
    try:
        got = content(path)
    except OSError as e:
        return False, f"{e}"
    if got == want:
        return True, ""
    n = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return False, f"{len(got)} bytes, want {len(want)}, first difference at byte {n}"

A1, A2 = blob("A1", 10000), blob("A2", 5000)
B1 = blob("B1", 3000)
OLD = blob("old", 700)
C1, C2 = blob("C1", 4000), blob("C2", 1000)
F1, F2, F3 = blob("F1", 2000), blob("F2", 1000), blob("F3", 500)
H1 = blob("H1", 500)
P1, P2, P3 = blob("P1", 100), blob("P2", 50), blob("P3", 20)
Q1 = blob("Q1", 10)
U1, U2 = blob("U1", 100), blob("U2", 50)
APPENDS, ENTRY, EVERY = 5000, 1024, 10
THREADS, T_APPENDS = 4, 1000
ENTRIES = [blob(f"e{i}", ENTRY) for i in range(97)]
TXNS, ROWS = 200, 10
# Unsynced when the power is cut: A2, B1, C2 (now in E), P2+P3, Q1, U2 (and
# the hammer's last writes, added in verify).
EXPECT_DROPPED = (len(A2) + len(B1) + len(C2) + len(P2) + len(P3) + len(Q1) + len(U2), 6)

def p_expected():
    p = bytearray(P1) + bytes(250 - len(P1))
    p[200:250] = P2
    p[90:110] = P3
    return bytes(p)

def workload(m):
    os.mkdir(f"{m}/wl")
    # 1 KiB appends, fsync every 10, like a write-ahead log.
    t = time.monotonic()
    with open(f"{m}/wl/append.log", "wb", buffering=0) as f:
        for i in range(APPENDS):
            f.write(ENTRIES[i % 97])
            if i % EVERY == EVERY - 1:
                os.fsync(f.fileno())
    dt = time.monotonic() - t
    ops = APPENDS + APPENDS // EVERY
    print(f"rate  appends: {APPENDS} x {ENTRY} B, fsync every {EVERY}: {dt:.2f} s, "
          f"{APPENDS / dt:.0f} writes/s + {APPENDS // EVERY / dt:.0f} fsyncs/s = {ops / dt:.0f} ops/s, "
          f"{APPENDS * ENTRY / dt / 1e6:.2f} MB/s", flush=True)
    ok, why = same(f"{m}/wl/append.log", append_expected())
    check("append workload reads back through the mount", ok, why)

    # Threads appending to their own files at once.
    def worker(k):
        with open(f"{m}/wl/thread{k}.log", "wb", buffering=0) as f:
            for i in range(T_APPENDS):
                f.write(ENTRIES[(k * 13 + i) % 97])
                if i % EVERY == EVERY - 1:
                    os.fsync(f.fileno())
    t = time.monotonic()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    dt = time.monotonic() - t
    n = THREADS * T_APPENDS
    print(f"rate  {THREADS} threads: {n} x {ENTRY} B appends, fsync every {EVERY}: {dt:.2f} s, "
          f"{(n + n // EVERY) / dt:.0f} ops/s, {n * ENTRY / dt / 1e6:.2f} MB/s", flush=True)
    bad = [f"thread{k}.log: {same(f'{m}/wl/thread{k}.log', thread_expected(k))[1]}" for k in range(THREADS)
           if not same(f"{m}/wl/thread{k}.log", thread_expected(k))[0]]
    check("threads' files read back through the mount", not bad, "; ".join(bad))

    # SQLite in its default rollback-journal mode, synchronous=FULL.
    try:
        t = time.monotonic()
        db = sqlite3.connect(f"{m}/wl/test.db", isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        for i in range(TXNS):
            db.execute("BEGIN")
            db.executemany("INSERT INTO t (v) VALUES (?)", [(ENTRIES[i % 97],)] * ROWS)
            db.execute("COMMIT")
        dt = time.monotonic() - t
        count = db.execute("SELECT count(*) FROM t").fetchone()[0]
        db.close()
        print(f"rate  sqlite: {TXNS} commits of {ROWS} x {ENTRY} B rows: {dt:.2f} s, "
              f"{TXNS / dt:.0f} commits/s", flush=True)
        why = f"{count} rows"
    except sqlite3.Error as e:
        count, why = None, f"sqlite: {e}"
    check("sqlite rows read back through the mount", count == TXNS * ROWS, why)

def append_expected():
    return b"".join(ENTRIES[i % 97] for i in range(APPENDS))

def thread_expected(k):
    return b"".join(ENTRIES[(k * 13 + i) % 97] for i in range(T_APPENDS))

def scenario(m):
    for name in "QUR":                                 # used at the cut; created now so
        write(f"{m}/{name}", [])                       # that nothing reuses H's inode
    write(f"{m}/H", [H1])                              # H: dirty, closed, deleted below
    write(f"{m}/A", [A1, A2], sync_after=[0])          # A: synced, then more not
    write(f"{m}/B", [B1])                              # B: never synced
    write(f"{m}/E", [OLD], sync_after=[0])             # E: synced, to be replaced
    write(f"{m}/C", [C1, C2], sync_after=[0])          # C: synced + dirty ...
    os.rename(f"{m}/C", f"{m}/E")                      # ... renamed over E
    with open(f"{m}/F", "wb", buffering=0) as f:       # F: synced + dirty,
        f.write(F1); os.fsync(f.fileno()); f.write(F2)
        os.rename(f"{m}/F", f"{m}/G")                  # renamed while open,
        f.write(F3)                                    # written after the rename,
    with open(f"{m}/G", "rb") as g:                    # and fsynced by another
        os.fsync(g.fileno())                           # (read-only) descriptor
    with open(f"{m}/P", "wb", buffering=0) as f:       # P: overlapping and
        f.write(P1); os.fsync(f.fileno())              # sparse dirty writes
        f.seek(200); f.write(P2)
        f.seek(90); f.write(P3)
    os.unlink(f"{m}/H")                                # H's dirty data goes with it
    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd); os.close(fd)

    for name, want in [("A", A1 + A2), ("B", B1), ("E", C1 + C2), ("G", F1 + F2 + F3), ("P", p_expected())]:
        ok, why = same(f"{m}/{name}", want)
        size = os.stat(f"{m}/{name}").st_size
        check(f"read through the mount: {name} has all {len(want)} bytes written, synced or not",
              ok and size == len(want), f"{why} (stat size {size})")
    check("read through the mount: unlinked H is gone", not os.path.exists(f"{m}/H"), "H is still there")

def holder(m, trigger, out):
    fd = os.open(f"{m}/Q", os.O_WRONLY)
    os.write(fd, Q1)
    # U: deleted while open (as a database drops a file a reader still has).
    u = os.open(f"{m}/U", os.O_RDWR)
    os.write(u, U1); os.fsync(u)
    os.unlink(f"{m}/U")
    os.write(u, U2)
    if os.pread(u, 150, 0) != U1 + U2:
        raise SystemExit("U does not read back after its unlink")
    with open(out, "w") as o:
        o.write("ready\n")
    while not os.path.exists(trigger):
        time.sleep(0.05)
    try:
        os.write(fd, b"after the cut")
        os.fsync(fd)
        result = "wrote"
    except OSError as e:
        result = f"error {os.strerror(e.errno)}"
    with open(out, "a") as o:
        o.write(result + "\n")
    while True:
        time.sleep(1)

def hammer(m, status):
    """Appends 1 KiB entries to R, fsyncing every 10, until the filesystem
    fails. status: bytes whose write returned, bytes whose fsync returned
    (acknowledged), and the first error."""
    sfd = os.open(status, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written = acked = i = 0

    def report(error=""):
        os.pwrite(sfd, f"{written} {acked} {error}".ljust(64).encode(), 0)

    fd = os.open(f"{m}/R", os.O_WRONLY)
    try:
        while True:
            written += os.write(fd, ENTRIES[i % 97])
            i += 1
            if i % EVERY == 0:
                os.fsync(fd)
                acked = written
                report()
    except OSError as e:
        report(errno.errorcode.get(e.errno, str(e.errno)))
    while True:
        time.sleep(1)

def verify(b, line, status):
    fields = open(status).read().split()
    written, acked, error = int(fields[0]), int(fields[1]), (fields[2:] or ["none"])[0]
    r = content(f"{b}/R")
    stream = b"".join(ENTRIES[i % 97] for i in range(written // ENTRY + 1))
    print(f"info  hammer: {acked // ENTRY} entries acknowledged, {written // ENTRY} written, "
          f"{len(r) // ENTRY} in the backing file after the cut; its first error: {error}", flush=True)
    check("after the cut: R, appended to until the cut, has every fsync-acknowledged byte "
          "and nothing that was not written", acked <= len(r) <= written and r == stream[:len(r)],
          f"{len(r)} bytes, {acked} acknowledged, {written} written")
    check("the writer appending at the cut saw its writes fail", error != "none", "no error before it was killed")
    dropped_r = written - len(r)
    nbytes, nfiles = EXPECT_DROPPED[0] + dropped_r, EXPECT_DROPPED[1] + (dropped_r > 0)
    want_line = f"lossyfs: cut: dropped {nbytes} bytes unsynced in {nfiles} files"
    check("lossyfs reports the unsynced bytes it dropped", line == want_line, f"got {line!r}, want {want_line!r}")
    for name, want, what in [
        ("A", A1, "exactly its fsynced bytes"),
        ("B", b"", "nothing: created (metadata) but never fsynced"),
        ("E", C1, "the renamed file's fsynced bytes only"),
        ("G", F1 + F2 + F3, "everything: dirty data followed the rename and was fsynced"),
        ("P", P1, "its fsynced bytes, none of the overlapping dirty writes"),
        ("Q", b"", "nothing: written, held open at the cut"),
    ]:
        ok, why = same(f"{b}/{name}", want)
        check(f"after the cut: {name} has {what}", ok, why)
    left = sorted(set(os.listdir(b)) - {"A", "B", "E", "G", "P", "Q", "R", "wl"})
    check("after the cut: no other files (H and U deleted, no .fuse_hidden leftovers)", not left, f"found {left}")
    ok, why = same(f"{b}/wl/append.log", append_expected())
    check("after the cut: the append workload's fsynced log is whole", ok, why)
    bad = [f"thread{k}.log: {same(f'{b}/wl/thread{k}.log', thread_expected(k))[1]}" for k in range(THREADS)
           if not same(f"{b}/wl/thread{k}.log", thread_expected(k))[0]]
    check("after the cut: the threads' fsynced files are whole", not bad, "; ".join(bad))
    try:
        db = sqlite3.connect(f"file:{b}/wl/test.db?mode=ro", uri=True)
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        count = db.execute("SELECT count(*) FROM t").fetchone()[0]
        db.close()
        why = f"integrity {integrity!r}, {count} rows"
    except sqlite3.Error as e:
        integrity, count, why = None, None, str(e)
    check(f"after the cut: sqlite database is intact with all {TXNS * ROWS} committed rows",
          integrity == "ok" and count == TXNS * ROWS, why)

cmd, args = sys.argv[1], sys.argv[2:]
{"workload": workload, "scenario": scenario, "holder": holder, "hammer": hammer, "verify": verify}[cmd](*args)
EOF
client() {
  "$PY" "$work/client.py" "$@" 2>&1 | tee -a "$results"
  ((PIPESTATUS[0] == 0)) || bad "the client's $1 step crashed"
}
mounted() { grep -q " $mnt fuse" /proc/self/mounts; }

# Mount.
"$PY" "$LOSSYFS" "$back" "$mnt" >"$work/fs.out" 2>"$work/fs.err" &
fs_pid=$!
for _ in $(seq 100); do
  grep -q '^lossyfs: mounted$' "$work/fs.out" 2>/dev/null && break
  kill -0 "$fs_pid" 2>/dev/null || break
  sleep 0.1
done
if grep -q '^lossyfs: mounted$' "$work/fs.out" && mounted; then
  ok "lossyfs mounts and says so"
else
  bad "lossyfs did not mount within 10 s"
  cat "$work/fs.out" "$work/fs.err" >&2
  echo "selftest: 0 passed, 1 failed"
  exit 1
fi

# Writes through the mount.
client workload "$mnt"
client scenario "$mnt"
"$PY" "$work/client.py" holder "$mnt" "$work/trigger" "$work/holder.out" 2>>"$work/holder.err" &
holder_pid=$!
for _ in $(seq 100); do
  grep -q ready "$work/holder.out" 2>/dev/null && break
  sleep 0.1
done
grep -q ready "$work/holder.out" 2>/dev/null || bad "the holder process could not write through the mount"
"$PY" "$work/client.py" hammer "$mnt" "$work/hammer.status" 2>>"$work/hammer.err" &
hammer_pid=$!
for _ in $(seq 100); do
  acked=$(awk '{print $2}' "$work/hammer.status" 2>/dev/null)
  ((${acked:-0} >= 100 * 1024)) && break
  sleep 0.1
done

# The power cut, while the holder has Q open and the hammer appends to R.
kill -USR1 "$fs_pid"
for _ in $(seq 150); do
  kill -0 "$fs_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$fs_pid" 2>/dev/null; then
  bad "lossyfs still runs 15 s after the cut"
  rc=none
else
  wait "$fs_pid"
  rc=$?
  fs_pid=""
fi
[[ $rc == 0 ]] && ok "lossyfs exits 0 after the cut" || bad "lossyfs exit status after the cut: $rc"
if mounted; then
  bad "the mount is still there after the cut (a process holds a file open)"
else
  ok "unmounted although a process still holds a file open"
fi
touch "$work/trigger"
for _ in $(seq 50); do
  [[ $(wc -l <"$work/holder.out" 2>/dev/null) -ge 2 ]] && break
  sleep 0.1
done
after=$(sed -n 2p "$work/holder.out" 2>/dev/null)
if [[ $after == error* ]]; then
  ok "a write after the cut fails (${after#error })"
else
  bad "a write after the cut did not fail: ${after:-no answer}"
fi
for _ in $(seq 50); do
  [[ $(awk '{print $3}' "$work/hammer.status" 2>/dev/null) ]] && break
  sleep 0.1
done
# Like the power-loss test: the writers die without any cleanup.
kill -9 "$holder_pid" "$hammer_pid" 2>/dev/null
wait "$holder_pid" "$hammer_pid" 2>/dev/null
holder_pid="" hammer_pid=""

# What survived.
client verify "$back" "$(grep '^lossyfs: cut:' "$work/fs.out")" "$work/hammer.status"
# libfuse 3.14.0 always prints "Ignoring invalid max threads value"; it is harmless.
if grep -qv 'Ignoring invalid max threads' "$work/fs.err"; then
  echo "lossyfs stderr:" >&2
  grep -v 'Ignoring invalid max threads' "$work/fs.err" | sed 's/^/  /' >&2
fi

passed=$(grep -c '^ok ' "$results")
failed=$(grep -c '^FAIL ' "$results")
echo "selftest: $passed passed, $failed failed"
((failed == 0))
