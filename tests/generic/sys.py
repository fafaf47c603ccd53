#!/usr/bin/env python3
"""tests/generic/sys.py - the system calls the shell can't make, for the
generic tests. Each subcommand prints "ok" (or its result) on success and
the errno's name (ENOENT, EXDEV, ...) on failure, so that .out files can
hold the expected error.

    sys.py renameat2 noreplace|exchange|whiteout|none OLD NEW
    sys.py rename|link|symlink OLD NEW
    sys.py unlink|rmdir|mkdir|stat|lstat|readlink PATH
    sys.py open PATH FLAG[,FLAG...]       (creat, excl, trunc, rdonly, ...)
    sys.py seek PATH data|hole OFFSET     (prints the offset or ENXIO)
    sys.py fallocate PATH MODE OFFSET LEN (MODE: 0 or keep,punch,zero)
    sys.py statfs PATH                    (bsize blocks bfree bavail files ffree namemax)
    sys.py odirect PATH SIZE              (O_DIRECT write, then read back and compare)
"""
import ctypes
import errno
import mmap
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)

RENAME_FLAGS = {"none": 0, "noreplace": 1, "exchange": 2, "whiteout": 4}
OPEN_FLAGS = {
    "rdonly": os.O_RDONLY, "wronly": os.O_WRONLY, "rdwr": os.O_RDWR,
    "creat": os.O_CREAT, "excl": os.O_EXCL, "trunc": os.O_TRUNC,
    "append": os.O_APPEND, "directory": os.O_DIRECTORY,
    "nofollow": os.O_NOFOLLOW, "direct": os.O_DIRECT,
}
FALLOC = {"keep": 1, "punch": 2, "zero": 16}


def name(e):
    return errno.errorcode.get(e, str(e))


def check(rc):
    if rc < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return rc


def renameat2(flags, old, new):
    AT_FDCWD = -100
    libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                               ctypes.c_char_p, ctypes.c_uint]
    bits = 0
    for w in flags.split(","):
        bits |= RENAME_FLAGS[w]
    check(libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), bits))
    return "ok"


def do_open(path, flags):
    f = 0
    for w in flags.split(","):
        f |= OPEN_FLAGS[w]
    os.close(os.open(path, f, 0o644))
    return "ok"


def seek(path, what, off):
    fd = os.open(path, os.O_RDONLY)
    try:
        return str(os.lseek(fd, int(off, 0),
                            os.SEEK_DATA if what == "data" else os.SEEK_HOLE))
    finally:
        os.close(fd)


def fallocate(path, mode, off, length):
    m = 0
    if mode != "0":
        for w in mode.split(","):
            m |= FALLOC[w]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int,
                                   ctypes.c_long, ctypes.c_long]
        check(libc.fallocate(fd, m, int(off, 0), int(length, 0)))
    finally:
        os.close(fd)
    return "ok"


def statfs(path):
    s = os.statvfs(path)
    return " ".join(str(x) for x in (s.f_bsize, s.f_blocks, s.f_bfree, s.f_bavail,
                                     s.f_files, s.f_ffree, s.f_namemax))


def odirect(path, size):
    size = int(size, 0)
    buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT wants
    for i in range(0, size, 4096):
        buf[i:i + 4096] = bytes([(i // 4096) % 251 + 1]) * 4096
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        if os.write(fd, buf) != size:
            return "short write"
        back = mmap.mmap(-1, size)
        os.lseek(fd, 0, os.SEEK_SET)
        if os.readv(fd, [back]) != size:
            return "short read"
        return "ok" if back[:] == buf[:] else "data differs"
    finally:
        os.close(fd)


def main(argv):
    cmd, args = argv[1], argv[2:]
    table = {
        "renameat2": lambda: renameat2(*args),
        "rename": lambda: os.rename(*args) or "ok",
        "link": lambda: os.link(*args) or "ok",
        "symlink": lambda: os.symlink(*args) or "ok",
        "unlink": lambda: os.unlink(*args) or "ok",
        "rmdir": lambda: os.rmdir(*args) or "ok",
        "mkdir": lambda: os.mkdir(*args) or "ok",
        "stat": lambda: os.stat(*args) and "ok",
        "lstat": lambda: os.lstat(*args) and "ok",
        "readlink": lambda: os.readlink(*args),
        "open": lambda: do_open(*args),
        "seek": lambda: seek(*args),
        "fallocate": lambda: fallocate(*args),
        "statfs": lambda: statfs(*args),
        "odirect": lambda: odirect(*args),
    }
    try:
        print(table[cmd]())
    except OSError as e:
        print(name(e.errno))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
