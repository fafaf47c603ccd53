#!/usr/bin/env python3
"""tests/generic/handle.py - file handles for the generic tests:
name_to_handle_at(2) and open_by_handle_at(2), which python's os module
lacks. Errors print the errno's name, so .out files can hold them.

    handle.py save PATH FILE     name_to_handle_at(PATH), handle kept in FILE
    handle.py open MNT FILE      open_by_handle_at (MNT: any path on the
                                 mount): prints "ok <first line>" for a
                                 file, "ok dir <sorted names>" for a directory
    handle.py path MNT FILE      the path the opened handle has now
                                 (/proc/self/fd), relative to MNT
    handle.py forge MNT INO GEN  open_by_handle_at of a FUSE handle made up
                                 here (FILEID_INO64_GEN: node id, generation)
    handle.py gen PATH FILE      the generation in PATH's FUSE handle
                                 (kept in FILE)
"""
import ctypes
import errno
import os
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
MAX_HANDLE_SZ = 128


class FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    ]


def err(e):
    print(errno.errorcode.get(e, str(e)))
    sys.exit(0)


def save(path, out):
    fh = FileHandle()
    fh.handle_bytes = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    at_fdcwd = -100
    rc = libc.name_to_handle_at(at_fdcwd, path.encode(), ctypes.byref(fh),
                                ctypes.byref(mount_id), 0)
    if rc < 0:
        err(ctypes.get_errno())
    with open(out, "wb") as f:
        f.write(struct.pack("=Ii", fh.handle_bytes, fh.handle_type))
        f.write(bytes(fh.f_handle[: fh.handle_bytes]))


FILEID_INO64_GEN = 0x81


def forged(ino, gen):
    body = struct.pack("=III", ino >> 32, ino & 0xFFFFFFFF, gen)
    return struct.pack("=Ii", len(body), FILEID_INO64_GEN) + body


def opened(mnt, saved):
    if isinstance(saved, bytes):
        raw = saved
    else:
        with open(saved, "rb") as f:
            raw = f.read()
    n, kind = struct.unpack("=Ii", raw[:8])
    fh = FileHandle()
    fh.handle_bytes = n
    fh.handle_type = kind
    for i, b in enumerate(raw[8 : 8 + n]):
        fh.f_handle[i] = b
    mfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), os.O_RDONLY)
        if fd < 0:
            err(ctypes.get_errno())
        return fd
    finally:
        os.close(mfd)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "forge":
        fd = opened(sys.argv[2], forged(int(sys.argv[3]), int(sys.argv[4])))
        os.close(fd)
        print("ok")
        return
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    cmd, a, b = sys.argv[1:]
    if cmd == "gen":
        save(a, b)
        with open(b, "rb") as f:
            raw = f.read()
        n, kind = struct.unpack("=Ii", raw[:8])
        if kind != FILEID_INO64_GEN or n < 12:
            print(f"handle type {kind:#x}, {n} bytes")
        else:
            print(struct.unpack("=III", raw[8:20])[2])
        return
    if cmd == "save":
        save(a, b)
        print("ok")
    elif cmd == "open":
        fd = opened(a, b)
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            print("ok dir", " ".join(sorted(os.listdir(fd))))
        else:
            data = os.read(fd, 4096).decode(errors="replace")
            print("ok", data.splitlines()[0] if data else "")
        os.close(fd)
    elif cmd == "path":
        fd = opened(a, b)
        where = os.readlink(f"/proc/self/fd/{fd}")
        print(os.path.relpath(where, os.path.realpath(a)))
        os.close(fd)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
