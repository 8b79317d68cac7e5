#!/usr/bin/env python3
"""lossyfs: a FUSE passthrough filesystem that can simulate a power cut.

Usage: python3 lossyfs.py BACKING_DIR MOUNTPOINT

Mounts BACKING_DIR at MOUNTPOINT. It exists for the power-loss test: a
database runs on the mount, the test cuts the power, and then checks that
every write the database acknowledged is still in BACKING_DIR. That only holds
if the database fsyncs, because here, as on a disk with a volatile cache,

* data written to a file stays in this process's memory (per inode, as dirty
  byte ranges over the backing file) until the file is fsynced (fsync or
  fdatasync, or a write on an O_SYNC/O_DSYNC handle). Only then is it written
  to the backing file, and the backing file is fsynced. close, flush and
  release do not make data durable. Reads and sizes through the mount see the
  dirty data, like a page cache would.
* SIGUSR1 is the power cut. From that instant every operation fails with EIO,
  all dirty data is discarded, the filesystem unmounts itself (lazily, so a
  process that still has files open does not keep it mounted) and the script
  exits 0 after printing
      lossyfs: cut: dropped N bytes unsynced in M files
  SIGTERM and SIGINT unmount the same way ("stopped" instead of "cut"): dirty
  data is dropped there too. "lossyfs: mounted" is printed once the mount is
  ready.

Where it is more lenient than a real power cut (it may keep more than a
disk would; it never loses anything that was fsynced):

* Metadata goes straight to BACKING_DIR: create, mkdir, rename, link,
  unlink, rmdir, truncate, chmod, utimens and fallocate's size extension are
  durable as soon as they return. A real filesystem may lose unsynced
  metadata as well; RocksDB fsyncs its directory after creating and renaming
  files anyway, and fsyncdir is passed through. One consequence is harsher
  instead: a truncate that changes the size of a file with unsynced data
  makes the new size durable, so after a cut the file can end in zeros where
  that data was (as on some filesystems after a crash). A truncate to the
  current size, which RocksDB does when it closes a file, is a no-op.
* An fsync still running at the cut may already have written its data to
  the backing file (a disk can persist a write whose acknowledgement the
  power cut loses); the fsync itself fails with EIO.

Dirty data is keyed by the backing file's (st_dev, st_ino), so it stays with a
file across renames and is shared by hard links. It is dropped when the file
has no name left and no open handle. POSIX and flock locks are left to the
kernel (no lock operations are implemented, so it keeps them locally).
fallocate succeeds without allocating: mode 0 extends the size (in the backing
file, like truncate), KEEP_SIZE alone is a no-op, PUNCH_HOLE and ZERO_RANGE
zero the range as dirty data. The kernel writeback cache and direct_io are
left off. A deleted file that is still open can be read, written, fsynced
and ftruncated through its descriptor, but a stat, chmod or utimens of it
fails with ESTALE once the kernel's cached attributes expire: libfuse's
high-level API has no path for it then (RocksDB only reads such files).

The FUSE binding is mfusepy (ctypes over libfuse3); tests/powerloss/setup.sh
installs it into a venv with Debian's fuse3.
"""

import bisect
import errno
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid

# Use libfuse3 even where libfuse2 is also installed: the overrides below are
# written against the libfuse3 callback signatures.
if not os.environ.get("FUSE_LIBRARY_PATH"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy  # noqa: E402
from mfusepy import FuseOSError  # noqa: E402

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
FUSE_CAP_WRITEBACK_CACHE = 1 << 16
# Flags the backing descriptor must not carry: offsets are explicit (no
# O_APPEND), syncing is done here (no O_SYNC/O_DSYNC), buffers are unaligned.
BACKING_STRIP = os.O_APPEND | os.O_SYNC | os.O_DSYNC | getattr(os, "O_DIRECT", 0)

log = logging.getLogger("lossyfs")


def say(line):
    print(f"lossyfs: {line}", flush=True)


class Inode:
    """Dirty (unsynced) byte ranges of one backing file, plus its open count.

    starts[i] is the offset of the extent bufs[i]; extents are sorted and
    neither overlap nor touch (touching ones are merged)."""

    __slots__ = ("starts", "bufs", "opens")

    def __init__(self):
        self.starts = []
        self.bufs = []
        self.opens = 0

    def dirty_bytes(self):
        return sum(len(b) for b in self.bufs)

    def end(self):
        return self.starts[-1] + len(self.bufs[-1]) if self.starts else 0

    def clear(self):
        self.starts.clear()
        self.bufs.clear()

    def write(self, off, data):
        n = len(data)
        if not n:
            return
        end = off + n
        starts, bufs = self.starts, self.bufs
        if starts:
            # Fast path: overwrite or extend the last extent (appends).
            ls, lb = starts[-1], bufs[-1]
            if ls <= off <= ls + len(lb):
                lb[off - ls:off - ls + n] = data
                return
        i = bisect.bisect_right(starts, off) - 1
        first = i if i >= 0 and starts[i] + len(bufs[i]) >= off else i + 1
        last = bisect.bisect_right(starts, end) - 1  # last extent starting at or before end
        if last < first:
            starts.insert(first, off)
            bufs.insert(first, bytearray(data))
            return
        s0 = starts[first]
        if first == last and s0 <= off:
            bufs[first][off - s0:off - s0 + n] = data
            return
        ns = min(s0, off)
        ne = max(end, starts[last] + len(bufs[last]))
        nb = bytearray(ne - ns)
        for k in range(first, last + 1):
            s, b = starts[k], bufs[k]
            nb[s - ns:s - ns + len(b)] = b
        nb[off - ns:end - ns] = data
        starts[first:last + 1] = [ns]
        bufs[first:last + 1] = [nb]

    def truncate(self, length):
        i = bisect.bisect_left(self.starts, length)
        del self.starts[i:]
        del self.bufs[i:]
        if self.starts and self.starts[-1] + len(self.bufs[-1]) > length:
            del self.bufs[-1][length - self.starts[-1]:]

    def overlay(self, off, out):
        """Copy the dirty bytes within [off, off + len(out)) into out."""
        end = off + len(out)
        starts, bufs = self.starts, self.bufs
        k = max(bisect.bisect_right(starts, off) - 1, 0)
        while k < len(starts) and starts[k] < end:
            s, b = starts[k], bufs[k]
            lo, hi = max(s, off), min(s + len(b), end)
            if lo < hi:
                out[lo - off:hi - off] = memoryview(b)[lo - s:hi - s]
            k += 1


class Handle:
    __slots__ = ("fd", "key", "writable", "sync")

    def __init__(self, fd, key, flags):
        self.fd = fd
        self.key = key
        self.writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        self.sync = bool(flags & os.O_DSYNC)  # O_SYNC includes O_DSYNC's bit


def _key(st):
    return (st.st_dev, st.st_ino)


class LossyFS(mfusepy.Operations):
    use_ns = True

    def __init__(self, root):
        self.root = os.path.realpath(root)
        # Not named 'lock': mfusepy would register any attribute of that
        # name as the FUSE lock operation.
        self._mu = threading.Lock()
        self.cut = False
        self.handles = {}  # fh -> Handle
        self.inodes = {}  # (st_dev, st_ino) -> Inode, while open or dirty
        self.next_fh = 1
        self.mounted = threading.Event()

    # -- helpers (call with self._mu held) ---------------------------------

    def _check(self):
        if self.cut:
            # Stop the FUSE loop too; harmless when it is already stopping.
            try:
                mfusepy.fuse_exit()
            except Exception:
                pass
            raise FuseOSError(errno.EIO)

    def _full(self, path):
        if path is None:
            raise FuseOSError(errno.ENOENT)
        return os.path.join(self.root, path.lstrip("/"))

    def _handle(self, fh):
        h = self.handles.get(fh)
        if h is None:
            raise FuseOSError(errno.EBADF)
        return h

    def _gc(self, key, nlink=None):
        """Forget an inode's record once nothing needs it: no open handle and
        either no dirty data or no name left (then the data is unreachable)."""
        ino = self.inodes.get(key)
        if ino is None or ino.opens:
            return
        if nlink == 0 or not ino.starts:
            del self.inodes[key]

    def _open_backing(self, full, flags, mode=0o644):
        bflags = flags & ~BACKING_STRIP
        if (flags & os.O_ACCMODE) == os.O_WRONLY:
            # Also readable, so the handle can serve the kernel's reads.
            try:
                return os.open(full, (bflags & ~os.O_ACCMODE) | os.O_RDWR, mode)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
        return os.open(full, bflags, mode)

    def _add_handle(self, fd, flags, fresh):
        st = os.fstat(fd)
        key = _key(st)
        ino = self.inodes.get(key)
        if ino is None or fresh:  # a new file never inherits stale records
            ino = self.inodes[key] = Inode()
        if flags & os.O_TRUNC:
            ino.truncate(0)
        ino.opens += 1
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(fd, key, flags)
        return fh

    def _writable_fd(self, h):
        """A descriptor to write the backing file through (caller closes it)."""
        if h.writable:
            return os.dup(h.fd)
        return os.open(f"/proc/self/fd/{h.fd}", os.O_WRONLY)

    def _visible(self, st):
        d = {k: getattr(st, k) for k in (
            "st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size",
            "st_blocks", "st_blksize", "st_rdev", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")}
        for k in ("st_atime", "st_mtime", "st_ctime"):
            d[k] = d.pop(k + "_ns")
        if stat.S_ISREG(st.st_mode):
            ino = self.inodes.get(_key(st))
            if ino is not None and ino.end() > st.st_size:
                d["st_size"] = ino.end()
                d["st_blocks"] = max(st.st_blocks, (ino.end() + 511) // 512)
        return d

    def drop_all(self):
        """The power cut: forget every dirty byte. Returns (bytes, files)."""
        nbytes = nfiles = 0
        for ino in self.inodes.values():
            n = ino.dirty_bytes()
            if n:
                nbytes += n
                nfiles += 1
            ino.clear()
        return nbytes, nfiles

    # -- lifecycle ----------------------------------------------------------

    def init_with_config(self, conn, config):
        if config is not None:
            # Unlink an open file for real instead of renaming it to
            # .fuse_hiddenNNN, which would leave junk in BACKING_DIR.
            config.hard_remove = 1
        if conn is not None:
            conn.want &= ~FUSE_CAP_WRITEBACK_CACHE
        self.mounted.set()

    # -- metadata: straight to the backing directory --------------------------

    def getattr(self, path, fh=None):
        with self._mu:
            self._check()
            if fh is not None and fh in self.handles:
                st = os.fstat(self.handles[fh].fd)
            else:
                st = os.lstat(self._full(path))
            return self._visible(st)

    def access(self, path, amode):
        with self._mu:
            self._check()
            if not os.access(self._full(path), amode):
                raise FuseOSError(errno.EACCES)
            return 0

    def statfs(self, path):
        with self._mu:
            self._check()
            sv = os.statvfs(self.root)
        return {k: getattr(sv, k) for k in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
            "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")}

    def readdir(self, path, fh):
        with self._mu:
            self._check()
            return [".", ".."] + os.listdir(self._full(path))

    def fsyncdir(self, path, datasync, fh):
        with self._mu:
            self._check()
            fd = os.open(self._full(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._mu:
            self._check()
        return 0

    def mkdir(self, path, mode):
        with self._mu:
            self._check()
            os.mkdir(self._full(path), mode)
            return 0

    def rmdir(self, path):
        with self._mu:
            self._check()
            os.rmdir(self._full(path))
            return 0

    def unlink(self, path):
        with self._mu:
            self._check()
            full = self._full(path)
            st = os.lstat(full)
            os.unlink(full)
            if stat.S_ISREG(st.st_mode) and st.st_nlink <= 1:
                self._gc(_key(st), nlink=0)
            return 0

    def rename(self, old, new, flags=0):
        with self._mu:
            self._check()
            fold, fnew = self._full(old), self._full(new)
            try:
                target = os.lstat(fnew)
            except FileNotFoundError:
                target = None
            source = os.lstat(fold)
            if flags:
                _renameat2(fold, fnew, flags)
            else:
                os.rename(fold, fnew)
            # A replaced target loses its name, like an unlinked file.
            if (target is not None and not flags & RENAME_EXCHANGE and _key(target) != _key(source)
                    and stat.S_ISREG(target.st_mode) and target.st_nlink <= 1):
                self._gc(_key(target), nlink=0)
            return 0

    def link(self, target, source):
        with self._mu:
            self._check()
            os.link(self._full(source), self._full(target))
            return 0

    def symlink(self, target, source):
        with self._mu:
            self._check()
            os.symlink(source, self._full(target))
            return 0

    def readlink(self, path):
        with self._mu:
            self._check()
            return os.readlink(self._full(path))

    def chmod(self, path, mode, fh=None):
        with self._mu:
            self._check()
            if fh is not None and fh in self.handles:
                os.fchmod(self.handles[fh].fd, mode)
            else:
                os.chmod(self._full(path), mode, follow_symlinks=False)
            return 0

    def chown(self, path, uid, gid):
        with self._mu:
            self._check()
            os.chown(self._full(path), uid, gid, follow_symlinks=False)
            return 0

    def utimens(self, path, times=None, fh=None):
        """times: ((atime_s, atime_ns), (mtime_s, mtime_ns)) or None (now)."""
        with self._mu:
            self._check()
            h = self.handles.get(fh) if fh is not None else None
            target = h.fd if h is not None else self._full(path)
            now = time.time_ns()
            if times is None:
                ns = (now, now)
            else:
                st = os.fstat(target) if h is not None else os.lstat(target)
                current = (st.st_atime_ns, st.st_mtime_ns)
                ns = tuple(
                    now if t[1] == UTIME_NOW else cur if t[1] == UTIME_OMIT else t[0] * 10**9 + t[1]
                    for t, cur in zip(times, current))
            if h is not None:
                os.utime(target, ns=ns)
            else:
                os.utime(target, ns=ns, follow_symlinks=False)
            return 0

    def truncate(self, path, length, fh=None):
        with self._mu:
            self._check()
            h = self.handles.get(fh) if fh is not None else None
            full = None if h is not None else self._full(path)
            st = os.fstat(h.fd) if h is not None else os.stat(full)
            key = _key(st)
            ino = self.inodes.get(key)
            # Truncating to the current size changes nothing (RocksDB does
            # that when it closes a file): leave an unsynced tail unsynced.
            if length != max(st.st_size, ino.end() if ino is not None else 0):
                if h is not None:
                    fd = self._writable_fd(h)
                    try:
                        os.ftruncate(fd, length)
                    finally:
                        os.close(fd)
                else:
                    os.truncate(full, length)
            if ino is not None:
                ino.truncate(length)
                self._gc(key)
            return 0

    # -- files ----------------------------------------------------------------

    def create(self, path, mode, flags):
        with self._mu:
            self._check()
            full = self._full(path)
            fresh = not os.path.lexists(full)
            fd = self._open_backing(full, flags | os.O_CREAT, mode)
            return self._add_handle(fd, flags, fresh)

    def open(self, path, flags):
        with self._mu:
            self._check()
            fd = self._open_backing(self._full(path), flags & ~os.O_CREAT)
            return self._add_handle(fd, flags, False)

    def read(self, path, size, offset, fh):
        with self._mu:
            self._check()
            h = self._handle(fh)
            data = os.pread(h.fd, size, offset)
            ino = self.inodes.get(h.key)
            if ino is None or not ino.starts:
                return data
            if len(data) < size:  # the backing file ends here: dirty data may go on
                n = min(size, max(len(data), ino.end() - offset))
            else:
                n = size
            out = bytearray(n)
            out[:len(data)] = data
            ino.overlay(offset, out)
            return bytes(out)

    def write(self, path, data, offset, fh):
        with self._mu:
            self._check()
            h = self._handle(fh)
            if not h.writable:
                raise FuseOSError(errno.EBADF)
            self.inodes[h.key].write(offset, data)
        if h.sync:
            self._sync(fh, datasync=True)
        return len(data)

    def fallocate(self, path, mode, offset, length, fh):
        with self._mu:
            self._check()
            h = self._handle(fh)
            if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                raise FuseOSError(errno.EOPNOTSUPP)
            ino = self.inodes[h.key]
            end = offset + length
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                size = max(os.fstat(h.fd).st_size, ino.end())
                if min(end, size) > offset:
                    ino.write(offset, bytes(min(end, size) - offset))
            if not mode & FALLOC_FL_KEEP_SIZE and end > os.fstat(h.fd).st_size:
                fd = self._writable_fd(h)
                try:
                    os.ftruncate(fd, end)
                finally:
                    os.close(fd)
            return 0

    def flush(self, path, fh):
        with self._mu:
            self._check()  # close() makes nothing durable
            return 0

    def release(self, path, fh):
        with self._mu:
            self._check()
            h = self.handles.pop(fh, None)
            if h is None:
                return 0
            try:
                ino = self.inodes.get(h.key)
                if ino is not None:
                    ino.opens -= 1
                    if not ino.opens:
                        self._gc(h.key, nlink=os.fstat(h.fd).st_nlink)
            finally:
                os.close(h.fd)
            return 0

    def fsync(self, path, datasync, fh):
        self._sync(fh, datasync)
        return 0

    def _sync(self, fh, datasync):
        """Make a file's dirty data durable: write it into the backing file,
        then fsync that (outside the lock, so other files are not stalled)."""
        with self._mu:
            self._check()
            h = self._handle(fh)
            fd = self._writable_fd(h)
            try:
                ino = self.inodes.get(h.key)
                if ino is not None and ino.starts:
                    for s, b in zip(ino.starts, ino.bufs):
                        view = memoryview(b)
                        while view:
                            n = os.pwrite(fd, view, s)
                            view, s = view[n:], s + n
                    ino.clear()
            except BaseException:
                os.close(fd)
                raise
        try:
            (os.fdatasync if datasync else os.fsync)(fd)
        finally:
            os.close(fd)
        with self._mu:
            self._check()


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _renameat2(old, new, flags):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old)


class _FUSE(mfusepy.FUSE):
    """mfusepy's libfuse3 glue, with the arguments it drops passed on:
    rename's flags, and the file handle of ftruncate, fchmod and futimens
    (an unlinked open file has no path)."""

    def _path(self, path):
        return None if path is None else path.decode(self.encoding, self.errors)

    @staticmethod
    def _fh(fip):
        return fip.contents.fh if fip else None

    def rename_fuse_3(self, old, new, flags):
        return self.operations.rename(self._path(old), self._path(new), flags)

    def truncate_fuse_3(self, path, length, fip):
        return self.operations.truncate(self._path(path), length, self._fh(fip))

    def chmod_fuse_3(self, path, mode, fip):
        return self.operations.chmod(self._path(path), mode, self._fh(fip))

    def utimens_fuse_3(self, path, buf, fip):
        times = None
        if buf:
            a, m = buf.contents.actime, buf.contents.modtime
            times = ((a.tv_sec, a.tv_nsec), (m.tv_sec, m.tv_nsec))
        return self.operations.utimens(self._path(path), times, self._fh(fip))


def _lazy_unmount(mountpoint):
    cmds = [["umount", "-l", mountpoint]] if os.geteuid() == 0 else []
    cmds.append(["fusermount3", "-u", "-z", "-q", mountpoint])
    for cmd in cmds:
        try:
            if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                return
        except FileNotFoundError:
            pass


def _abort_connection(conn_id):
    try:
        with open(f"/sys/fs/fuse/connections/{conn_id}/abort", "w") as f:
            f.write("1")
    except OSError:
        pass


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} BACKING_DIR MOUNTPOINT", file=sys.stderr)
        return 2
    backing, mountpoint = os.path.realpath(argv[1]), os.path.realpath(argv[2])
    for d in (backing, mountpoint):
        if not os.path.isdir(d):
            print(f"lossyfs: not a directory: {d}", file=sys.stderr)
            return 2
    if mfusepy.fuse_version_major != 3:
        print(f"lossyfs: needs libfuse3, found {mfusepy.fuse_version_major}.{mfusepy.fuse_version_minor}",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="lossyfs: %(levelname)s %(name)s: %(message)s")

    # Signals are taken synchronously by the main thread (sigtimedwait); they
    # stay blocked in the FUSE threads, which inherit this mask.
    sigs = {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)

    fs = LossyFS(backing)
    failure = []

    def serve():
        try:
            opts = dict(foreground=True, fsname="lossyfs", subtype="lossyfs")
            if os.geteuid() == 0:
                opts["allow_other"] = True
            _FUSE(fs, mountpoint, **opts)
        except BaseException as e:  # reported by the main thread
            failure.append(e)

    server = threading.Thread(target=serve, name="fuse", daemon=True)
    server.start()

    conn_id = None
    sig = None
    while sig is None:
        info = signal.sigtimedwait(sigs, 0.2)
        if info is not None:
            sig = info.si_signo
        elif not server.is_alive():
            break
        elif conn_id is None and fs.mounted.is_set():
            try:
                conn_id = os.minor(os.stat(mountpoint).st_dev)
            except OSError:
                conn_id = -1
            say("mounted")

    with fs._mu:
        fs.cut = True
        nbytes, nfiles = fs.drop_all()

    if server.is_alive():
        # Every operation now fails and calls fuse_exit(); look up a name that
        # is in no cache so that one reaches us. libfuse then returns from
        # its loop, closes /dev/fuse (aborting what the kernel still has
        # queued) and unmounts lazily.
        def poke():
            try:
                os.stat(os.path.join(mountpoint, f".lossyfs-stop-{uuid.uuid4().hex}"))
            except OSError:
                pass

        threading.Thread(target=poke, daemon=True).start()
        server.join(10)
    if server.is_alive() or os.path.ismount(mountpoint):
        _lazy_unmount(mountpoint)
        if conn_id is not None and conn_id >= 0:
            _abort_connection(conn_id)
        server.join(5)

    if failure and conn_id is None:
        print(f"lossyfs: mount failed: {failure[0]!r}", file=sys.stderr)
        return 1
    what = "cut" if sig == signal.SIGUSR1 else "stopped"
    say(f"{what}: dropped {nbytes} bytes unsynced in {nfiles} files")
    if os.path.ismount(mountpoint):
        print(f"lossyfs: {mountpoint} is still mounted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # FUSE's threads may still sit in C code
