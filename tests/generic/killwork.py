#!/usr/bin/env python3
"""tests/generic/killwork.py - the workload of the kill tests and its check.

    killwork.py run DIR LOG FIRST [SECONDS]
        Until killed, SECONDS (default 60) pass or the filesystem fails
        (ENOTCONN, EIO): create files DIR/f<ID> (ID from FIRST up), write
        them in pieces, fsync some, rename some fsynced ones to DIR/r<ID>,
        unlink some fsynced ones while still open and write on into them,
        unlink the oldest files (of this run or earlier ones) when they hold
        more than 48 MiB.
        LOG (outside the filesystem under test) gets, in order:
            F ID SIZE   after fsync() of f<ID> returned (SIZE bytes durable)
            R ID        before rename f<ID> -> r<ID>
            U ID        before unlink of the file of ID (open fd kept)
        "ready" goes to LOG.ready after the first fsync.
    killwork.py check DIR LOG
        After the kill and a new mount: every fsynced file that wasn't
        unlinked is there under exactly one of its names with at least its
        fsynced bytes, all of them right; no file anywhere has a byte that
        is neither its own pattern nor zero. Prints one line per finding
        and "check done".

The byte at offset O of the file of ID is ((ID * 131 + O) % 251) + 1: never
zero, and different from file to file, so that foreign bytes show.
"""
import errno
import os
import random
import sys
import time


def pattern(ident, off, size):
    base = bytes(((ident * 131 + k) % 251) + 1 for k in range(251))
    start = off % 251
    reps = (start + size) // 251 + 1
    return (base * reps)[start:start + size]


def run(d, logpath, first, seconds=60):
    first, deadline = int(first), time.time() + float(seconds)
    rnd = random.Random(first)
    log = open(logpath, "a", buffering=1)
    held = []  # fds of unlinked files
    names = {}  # id -> current name
    fsynced = []
    ident = first
    live = {}  # id -> size, files with a name
    for p in os.listdir(d):  # from earlier rounds
        if p[0] in "fr" and p[1:].isdigit():
            names[int(p[1:])] = os.path.join(d, p)
            live[int(p[1:])] = os.stat(os.path.join(d, p)).st_size
    try:
        while time.time() < deadline:
            name = os.path.join(d, "f%d" % ident)
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            size = rnd.choice((1, 4095, 4096, 5000, 65536, 200000, 1 << 20))
            off = 0
            while off < size:
                n = min(size - off, rnd.choice((512, 4096, 65536)))
                os.pwrite(fd, pattern(ident, off, n), off)
                off += n
            names[ident] = name
            live[ident] = size
            if rnd.random() < 0.6:
                os.fsync(fd)
                log.write("F %d %d\n" % (ident, size))
                fsynced.append(ident)
                if not os.path.exists(logpath + ".ready"):
                    open(logpath + ".ready", "w").close()
            r = rnd.random()
            if fsynced and r < 0.25:
                v = rnd.choice(fsynced)
                if names[v].endswith("f%d" % v):
                    log.write("R %d\n" % v)
                    new = os.path.join(d, "r%d" % v)
                    os.rename(names[v], new)
                    names[v] = new
            elif fsynced and r < 0.4 and len(held) < 8:
                v = fsynced.pop(rnd.randrange(len(fsynced)))
                ufd = os.open(names[v], os.O_RDWR)
                log.write("U %d\n" % v)
                os.unlink(names[v])
                st = os.fstat(ufd)
                os.pwrite(ufd, pattern(v, st.st_size, 100000), st.st_size)
                held.append(ufd)
                live.pop(v, None)
            while sum(live.values()) > 48 << 20:
                # Keep the filesystem from filling: drop the oldest file.
                v = min(live)
                log.write("U %d\n" % v)
                os.unlink(names[v])
                del live[v]
                if v in fsynced:
                    fsynced.remove(v)
            os.close(fd)
            ident += 1
    except OSError as e:
        if e.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO,
                           errno.ENOENT, errno.EROFS):
            raise
    return "stopped"


def check(d, logpath):
    durable, renamed, unlinked = {}, set(), set()
    for line in open(logpath):
        w = line.split()
        if w[0] == "F":
            durable[int(w[1])] = int(w[2])
        elif w[0] == "R":
            renamed.add(int(w[1]))
        elif w[0] == "U":
            unlinked.add(int(w[1]))
    out = []
    for ident, size in sorted(durable.items()):
        if ident in unlinked:
            continue
        there = [p for p in ("f%d" % ident, "r%d" % ident)
                 if os.path.exists(os.path.join(d, p))]
        if ident not in renamed and there == ["r%d" % ident]:
            out.append("f%d: renamed though never renamed" % ident)
        if len(there) != 1:
            out.append("fsynced file %d under %d names %s" % (ident, len(there), there))
            continue
        data = open(os.path.join(d, there[0]), "rb").read()
        if len(data) < size:
            out.append("%s: %d bytes, %d were fsynced" % (there[0], len(data), size))
        elif data[:size] != pattern(ident, 0, size):
            out.append("%s: fsynced bytes differ" % there[0])
    for p in sorted(os.listdir(d)):
        if p == "lost+found" or p[0] not in "fr" or not p[1:].isdigit():
            if p != "lost+found":
                out.append("unexpected name %s" % p)
            continue
        ident = int(p[1:])
        data = open(os.path.join(d, p), "rb").read()
        want = pattern(ident, 0, len(data))
        bad = sum(1 for a, b in zip(data, want) if a != b and a != 0) if data != want else 0
        if bad:
            out.append("%s: %d foreign bytes" % (p, bad))
    out.append("check done")
    return "\n".join(out)


def main(argv):
    if argv[1] == "run":
        print(run(*argv[2:]))
    elif argv[1] == "check":
        print(check(*argv[2:]))
    else:
        sys.exit("usage: killwork.py run|check ...")


if __name__ == "__main__":
    main(sys.argv)
