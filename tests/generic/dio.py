#!/usr/bin/env python3
"""tests/generic/dio.py - coherence of direct I/O with the page cache.

    dio.py aio FILE SECONDS     asynchronous (Linux AIO) O_DIRECT writes of
                                640 KiB cycling over FILE, four in flight,
                                while two processes loop buffered reads of
                                it; after each write completes, a buffered
                                read of its range must return its bytes
    dio.py sync FILE SECONDS    the same with synchronous O_DIRECT pwrite
    dio.py read FILE            buffered writes, each read back at once
                                with O_DIRECT

Prints "ok many" (20 writes or more checked, else their count), the
first stale range found, or "no AIO: ..." where io_setup fails.
"""
import ctypes
import mmap
import os
import struct
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
CHUNK = 640 * 1024
CHUNKS = 8
DEPTH = 4
PAGE = 4096
# x86_64 and aarch64 numbers of io_setup, io_destroy, io_getevents, io_submit.
SYSNO = {
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
}[os.uname().machine]
IOCB_CMD_PWRITE = 1


class Iocb(ctypes.Structure):
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class IoEvent(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


def oserr(what):
    e = ctypes.get_errno()
    raise OSError(e, f"{what}: {os.strerror(e)}")


def pattern(chunk, seq):
    """A write's bytes: every 4 KiB page names its chunk, the write's
    sequence number and the page, so a stale page shows as such."""
    out = bytearray()
    for p in range(CHUNK // PAGE):
        head = struct.pack("<QQQ", chunk, seq, p)
        out += (head * (PAGE // len(head) + 1))[:PAGE]
    return bytes(out)


def reader(path, stop_at):
    fd = os.open(path, os.O_RDONLY)
    while time.time() < stop_at:
        for c in range(CHUNKS):
            os.pread(fd, CHUNK, c * CHUNK)
    os.close(fd)
    os._exit(0)


def check(bfd, chunk, seq):
    got = os.pread(bfd, CHUNK, chunk * CHUNK)
    want = pattern(chunk, seq)
    if got == want:
        return None
    for p in range(CHUNK // PAGE):
        g = got[p * PAGE : p * PAGE + 24]
        if g != want[p * PAGE : p * PAGE + 24]:
            old = struct.unpack("<QQQ", g) if len(g) == 24 else g
            return f"stale: chunk {chunk} write {seq} page {p} reads {old}"
    return f"stale: chunk {chunk} write {seq} (short read {len(got)})"


def run_writes(path, seconds, asynchronous):
    # The file exists whole before the readers start.
    with open(path, "wb") as f:
        for c in range(CHUNKS):
            f.write(pattern(c, 0))
        f.flush()
        os.fsync(f.fileno())
    stop_at = time.time() + seconds
    kids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            reader(path, stop_at + 1)
        kids.append(pid)
    dfd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    bfd = os.open(path, os.O_RDONLY)
    bufs = [mmap.mmap(-1, CHUNK) for _ in range(DEPTH)]
    addrs = [ctypes.addressof(ctypes.c_char.from_buffer(b)) for b in bufs]
    seq, checked, bad = 0, 0, None
    ctx = ctypes.c_ulong(0)
    if asynchronous and libc.syscall(SYSNO[0], DEPTH, ctypes.byref(ctx)) < 0:
        e = ctypes.get_errno()
        for pid in kids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        print(f"no AIO: io_setup: {os.strerror(e)}")
        return
    iocbs = [Iocb() for _ in range(DEPTH)]
    inflight = {}  # slot -> (chunk, seq)
    try:
        while time.time() < stop_at and bad is None:
            if not asynchronous:
                seq += 1
                chunk = seq % CHUNKS
                bufs[0][:] = pattern(chunk, seq)
                n = os.pwrite(dfd, bufs[0], chunk * CHUNK)
                if n != CHUNK:
                    raise OSError(f"short direct write {n}")
                bad = check(bfd, chunk, seq)
                checked += 1
                continue
            for slot in range(DEPTH):
                if slot in inflight:
                    continue
                seq += 1
                chunk = seq % CHUNKS
                bufs[slot][:] = pattern(chunk, seq)
                cb = iocbs[slot]
                ctypes.memset(ctypes.byref(cb), 0, ctypes.sizeof(cb))
                cb.aio_data = slot
                cb.aio_lio_opcode = IOCB_CMD_PWRITE
                cb.aio_fildes = dfd
                cb.aio_buf = addrs[slot]
                cb.aio_nbytes = CHUNK
                cb.aio_offset = chunk * CHUNK
                ptr = ctypes.pointer(cb)
                if libc.syscall(SYSNO[3], ctx, 1, ctypes.byref(ptr)) != 1:
                    oserr("io_submit")
                inflight[slot] = (chunk, seq)
            ev = IoEvent()
            if libc.syscall(SYSNO[2], ctx, 1, 1, ctypes.byref(ev), None) != 1:
                oserr("io_getevents")
            chunk, s = inflight.pop(ev.data)
            if ev.res != CHUNK:
                raise OSError(f"direct write: {ev.res}")
            bad = check(bfd, chunk, s)
            checked += 1
        # Let the writes still in flight finish.
        while inflight:
            ev = IoEvent()
            if libc.syscall(SYSNO[2], ctx, 1, 1, ctypes.byref(ev), None) != 1:
                oserr("io_getevents")
            inflight.pop(ev.data)
    finally:
        if asynchronous:
            libc.syscall(SYSNO[1], ctx)
        for pid in kids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(dfd)
        os.close(bfd)
    print(bad or f"ok {'many' if checked >= 20 else checked}")


def run_reads(path):
    with open(path, "wb") as f:
        f.write(b"\0" * CHUNK * CHUNKS)
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, CHUNK)
    with open(path, "r+b", buffering=0) as f:
        for seq in range(1, 3 * CHUNKS + 1):
            chunk = seq % CHUNKS
            want = pattern(chunk, seq)
            os.pwrite(f.fileno(), want, chunk * CHUNK)
            n = os.preadv(dfd, [buf], chunk * CHUNK)
            if n != CHUNK or buf[:] != want:
                print(f"stale: direct read of chunk {chunk} after buffered write {seq}")
                return
    os.close(dfd)
    print("ok")


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] in ("aio", "sync"):
        run_writes(args[1], float(args[2]), args[0] == "aio")
    elif len(args) == 2 and args[0] == "read":
        run_reads(args[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
