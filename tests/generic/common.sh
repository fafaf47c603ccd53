# tests/generic/common.sh - helpers every generic test sources (the
# counterpart of xfstests' common/rc). scripts/check runs each test with
# bash from the top of the repository and exports:
#
#   FSTYP           biofs, ext4, tmpfs, or what TEST_DIR's mount is
#   TEST_DIR        the mounted test filesystem (kept across tests)
#   TEST_IMAGE      its image, when scripts/check manages it
#   SCRATCH_MNT     where the scratch filesystem is mounted
#   SCRATCH_IMAGE   its image (biofs, ext4); empty for tmpfs
#   SCRATCH_SIZE    the default size of a scratch filesystem
#   SCRATCH_OK      1 if a scratch filesystem can be made, else why not
#   MKFS_BIOFS, FSCK_BIOFS, BIOFS   the biofs binaries
#   BIOFS_FSX, BIOFS_FSSTRESS       the exercisers (FSX_PROG, FSSTRESS_PROG here)
#   BIOFS_FAULT                     the fault-injection scenarios (FAULT_PROG here)
#   BIOFS_CRASH                     the crash checker (CRASH_PROG here)
#   BIOFS_MOUNT_OPTIONS             -o options of biofs mounts
#   RESULT_DIR      where this test's .full log goes
#   CHECK_STATE     scripts/check's private state directory
#
# A test prints what must match its .out file on stdout (stderr too is
# compared), writes anything else to $seqres.full, and ends with exit 0
# (pass, if the output matches), _fail (fail) or _notrun (skip).
# shellcheck shell=bash
# shellcheck disable=SC2034,SC2120,SC2119  # variables are used by the tests; _scratch_mount's options are optional

export LC_ALL=C
here=${here:-$(pwd)}
seq=${seq:-$(basename "$0")}
seqnum=generic/$seq
seqres=$RESULT_DIR/$seq
tmp=/tmp/check-$seq.$$
status=1
: >"$seqres.full"
echo "QA output created by $seq"

# Tests may define _cleanup; it runs on exit, whatever the exit.
_cleanup() { :; }
_common_exit() {
    local rc=$?
    cd / || true
    _cleanup
    rm -rf "$tmp" "$tmp".*
    exit "$rc"
}
trap _common_exit EXIT
trap 'exit 130' INT TERM

# _notrun REASON: skip this test; scripts/check prints REASON.
_notrun() {
    echo "$*" >"$seqres.notrun"
    echo "notrun: $*" >>"$seqres.full"
    exit 0
}

# _fail MESSAGE: fail this test, saying why.
_fail() {
    echo "$*"
    echo "FAIL: $*" >>"$seqres.full"
    exit 1
}

# _log ...: append a line to the full log.
_log() { echo "$*" >>"$seqres.full"; }

_is_biofs() { [ "$FSTYP" = biofs ]; }

_require_command() {
    local cmd=$1 name=${2:-$1}
    command -v "$cmd" >/dev/null 2>&1 || _notrun "$name is not installed"
}

_require_biofs() {
    _is_biofs || _notrun "tests biofs itself (FSTYP is $FSTYP)"
}

_require_biofs_tools() {
    if [ ! -x "$MKFS_BIOFS" ] || [ ! -x "$FSCK_BIOFS" ]; then
        _notrun "mkfs.biofs and fsck.biofs are not available"
    fi
}

# The exercisers (docs/testing.md, "The exercisers"), built by scripts/check.
FSX_PROG=${BIOFS_FSX:-}
FSSTRESS_PROG=${BIOFS_FSSTRESS:-}
FAULT_PROG=${BIOFS_FAULT:-}
CRASH_PROG=${BIOFS_CRASH:-}
export FSX_PROG FSSTRESS_PROG FAULT_PROG CRASH_PROG
_require_fault() { [ -x "$FAULT_PROG" ] || _notrun "biofs-fault is not built (BIOFS_BIN or cargo)"; }
_require_fsx() { [ -x "$FSX_PROG" ] || _notrun "biofs-fsx is not built (BIOFS_BIN or cargo)"; }
_require_fsstress() {
    [ -x "$FSSTRESS_PROG" ] || _notrun "biofs-fsstress is not built (BIOFS_BIN or cargo)"
}
_require_crash() { [ -x "$CRASH_PROG" ] || _notrun "biofs-crash is not built (BIOFS_BIN or cargo)"; }

_require_root() { [ "$(id -u)" -eq 0 ] || _notrun "needs root"; }

# _require_user: a second user (nobody) the tests can switch to.
_require_user() {
    _require_root
    _require_command setpriv
    getent passwd nobody >/dev/null || _notrun "no user nobody"
}

# _user_do CMD...: run CMD as nobody:nogroup with no supplementary groups.
_user_do() {
    setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"
}

# _require_feature NAME PROBE...: PROBE must succeed. On biofs a missing
# feature is a failure (biofs claims all of them); elsewhere the test
# doesn't run (xfstests' _require_xfs_io_command).
_require_feature() {
    local name=$1
    shift
    if ! "$@" >>"$seqres.full" 2>&1; then
        _is_biofs && _fail "biofs lacks $name"
        _notrun "$FSTYP lacks $name"
    fi
}

# _require_xfs_io_command CMD [ARGS]: xfs_io's CMD works on TEST_DIR.
_require_xfs_io_command() {
    _require_command xfs_io
    local f=$TEST_DIR/.probe.$seq.$$ rc
    local args=${2:-}
    case $1 in
        falloc) args=${args:-"0 4k"} ;;
        fpunch | fzero) args=${args:-"0 4k"} ;;
        seek) args=${args:-"-d 0"} ;;
    esac
    xfs_io -f -c "pwrite -q 0 64k" "$f" >/dev/null 2>&1
    xfs_io -c "$1 $args" "$f" >"$tmp.probe" 2>&1
    rc=$?
    rm -f "$f"
    if [ $rc -ne 0 ] || grep -qiE "not supported|invalid|unknown command" "$tmp.probe"; then
        cat "$tmp.probe" >>"$seqres.full"
        _is_biofs && _fail "biofs lacks xfs_io $1"
        _notrun "xfs_io $1 is not supported on $FSTYP"
    fi
}

_require_xattr() {
    _require_command setfattr "setfattr (package attr)"
    local f=$TEST_DIR/.probe.$seq.$$
    touch "$f"
    _require_feature "user xattrs" setfattr -n user.probe -v 1 "$f"
    rm -f "$f"
}

_require_acl() {
    _require_command setfacl "setfacl (package acl)"
    local f=$TEST_DIR/.probe.$seq.$$
    touch "$f"
    _require_feature "POSIX ACLs" setfacl -m u:nobody:r "$f"
    rm -f "$f"
}

_require_python() { _require_command python3; }

# sys.py: the syscalls the shell lacks (renameat2, statfs, O_DIRECT, ...).
_sys() { python3 "$here/tests/generic/sys.py" "$@"; }

# _test_dir: a fresh directory for this test on the test filesystem,
# in $testdir (removed first if an earlier run left it).
_test_dir() {
    testdir=$TEST_DIR/$seq
    rm -rf "$testdir"
    mkdir "$testdir" || _fail "can't make $testdir"
}

# Path filters, so that .out files don't depend on where things are.
_filter_test_dir() { sed -e "s#$TEST_DIR#TEST_DIR#g"; }
_filter_scratch() { sed -e "s#$SCRATCH_MNT#SCRATCH_MNT#g"; }
_filter_paths() { _filter_test_dir | _filter_scratch; }

# xfs_io's rate lines ("4 KiB, 1 ops; 0.0000 sec (...)") change each run.
_filter_xfs_io() {
    sed -e '/ops; [0-9]/d' -e '/ops\/sec)$/d'
}

# Error messages: strip the program name and the path, keep the errno's
# text ("rm: cannot remove '/x/y': Is a directory" -> "Is a directory").
_filter_errno() { sed -e 's/.*: //'; }

# _md5 FILE...: checksums without the paths.
_md5() { md5sum "$@" | _filter_paths; }

# --- the scratch filesystem -------------------------------------------

_require_scratch() {
    [ "$SCRATCH_OK" = 1 ] || _notrun "no scratch filesystem: $SCRATCH_OK"
    mountpoint -q "$SCRATCH_MNT" && _scratch_unmount
    return 0
}

# _require_scratch_persistent: the scratch filesystem keeps its data
# across unmount and mount (tmpfs doesn't).
_require_scratch_persistent() {
    _require_scratch
    [ "$FSTYP" = tmpfs ] && _notrun "tmpfs keeps nothing across unmount"
    return 0
}

_scratch_used() { touch "$CHECK_STATE/scratch_used"; }

# _scratch_mkfs [SIZE]: make a fresh scratch filesystem of SIZE (default
# SCRATCH_SIZE). tmpfs gets its size at mount time.
_scratch_mkfs() {
    local size=${1:-$SCRATCH_SIZE}
    _scratch_used
    mountpoint -q "$SCRATCH_MNT" && _scratch_unmount
    echo "$size" >"$CHECK_STATE/scratch_size"
    case $FSTYP in
        biofs)
            [ -f "$SCRATCH_IMAGE" ] && rm -f "$SCRATCH_IMAGE"
            "$MKFS_BIOFS" -q -f --size "$size" "$SCRATCH_IMAGE" >>"$seqres.full" 2>&1
            ;;
        ext4)
            if [ ! -b "$SCRATCH_IMAGE" ]; then
                rm -f "$SCRATCH_IMAGE" && truncate -s "$size" "$SCRATCH_IMAGE"
            fi
            mkfs.ext4 -q -F "$SCRATCH_IMAGE" >>"$seqres.full" 2>&1
            ;;
        tmpfs) : ;;
        *) _notrun "can't make a $FSTYP filesystem" ;;
    esac || _fail "scratch mkfs failed (see $seqres.full)"
}

# _scratch_mount [OPTIONS]: mount the scratch filesystem (OPTIONS: extra
# mount options such as ro).
_scratch_mount() {
    _scratch_used
    local size
    size=$(cat "$CHECK_STATE/scratch_size" 2>/dev/null || echo "$SCRATCH_SIZE")
    case $FSTYP in
        biofs) "$BIOFS" -o "$BIOFS_MOUNT_OPTIONS${1:+,$1}" "$SCRATCH_IMAGE" "$SCRATCH_MNT" ;;
        ext4) mount -o "loop${1:+,$1}" "$SCRATCH_IMAGE" "$SCRATCH_MNT" ;;
        tmpfs) mount -t tmpfs -o "size=$size" tmpfs "$SCRATCH_MNT" ;;
    esac >>"$seqres.full" 2>&1 || _fail "scratch mount failed (see $seqres.full)"
}

# _scratch_unmount: unmount and wait until the image is written and free
# (biofs keeps a lock on its image until it has finished writing).
_scratch_unmount() {
    umount "$SCRATCH_MNT" >>"$seqres.full" 2>&1 || _fail "scratch umount failed"
    if [ -n "${SCRATCH_IMAGE:-}" ] && [ -e "$SCRATCH_IMAGE" ]; then
        flock "$SCRATCH_IMAGE" true
    fi
}

# _require_scratch_fuseblk: biofs mounts the scratch image as fuseblk (a
# loop device can be attached).
_require_scratch_fuseblk() {
    _require_scratch_persistent
    _require_biofs
    _require_root
    [ -e /dev/loop-control ] || _notrun "no loop devices: no fuseblk mount"
}

# _mount_type DIR: the type of the mount on DIR (fuse.biofs, fuseblk.biofs).
_mount_type() { findmnt -no FSTYPE --mountpoint "$1" | head -1; }

# _scratch_remount: unmount and mount again (what is written must stay).
_scratch_remount() {
    _scratch_unmount
    _scratch_mount
}
_scratch_cycle_mount() { _scratch_remount; }

# _check_scratch_fs: the unmounted scratch filesystem is consistent.
_check_scratch_fs() {
    mountpoint -q "$SCRATCH_MNT" && _scratch_unmount
    case $FSTYP in
        biofs) "$FSCK_BIOFS" -fn "$SCRATCH_IMAGE" >"$tmp.fsck" 2>&1 ;;
        ext4) e2fsck -fn "$SCRATCH_IMAGE" >"$tmp.fsck" 2>&1 ;;
        *) return 0 ;;
    esac
    local rc=$?
    cat "$tmp.fsck" >>"$seqres.full"
    [ $rc -eq 0 ] || _fail "scratch filesystem inconsistent (fsck exit $rc)"
}

# _used_kib DIR: KiB in use on DIR's filesystem (statfs: blocks - bfree).
_used_kib() { df -k --output=used "$1" | tail -1 | tr -d ' '; }
_avail_kib() { df -k --output=avail "$1" | tail -1 | tr -d ' '; }

# _wait_used_below DIR KIB [SECS]: wait (default up to 15 s) until DIR's
# filesystem has less than KIB in use; filesystems may free space at their
# next commit (btrfs, biofs) rather than at unlink. Fails if it never does.
_wait_used_below() {
    local dir=$1 kib=$2 secs=${3:-15} i used
    for ((i = 0; i < secs * 4; i++)); do
        used=$(_used_kib "$dir")
        [ "$used" -lt "$kib" ] && { _log "used $used KiB after $((i / 4)) s"; return 0; }
        sleep 0.25
    done
    _log "still $used KiB used after $secs s (wanted < $kib)"
    return 1
}

# --- killing the filesystem under a workload (group kill) --------------

# _require_scratch_kill: the scratch filesystem can be stopped dead. On
# biofs that is SIGKILL of the daemon serving SCRATCH_MNT; on ext4 it is
# a shutdown without a log flush (xfs_io's shutdown, the godown of
# xfstests), which loses what the journal hadn't committed the same way.
_require_scratch_kill() {
    _require_scratch_persistent
    case $FSTYP in
        biofs) _require_command pgrep ;;
        ext4) _require_command xfs_io ;;
        *) _notrun "can't kill $FSTYP under a workload" ;;
    esac
}

# _scratch_daemon_pid: the pid of the biofs daemon serving SCRATCH_MNT
# (the process named biofs whose command line has the scratch image).
_scratch_daemon_pid() {
    local pid
    for pid in $(pgrep -x biofs); do
        if tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$SCRATCH_IMAGE"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# _scratch_kill_daemon: stop the scratch filesystem dead in the middle of
# whatever runs on it (biofs: SIGKILL of its daemon; ext4: shutdown without
# log flush), then detach the dead mount with umount -l. Processes using
# it see errors (ENOTCONN, EIO) from then on.
_scratch_kill_daemon() {
    local pid i
    case $FSTYP in
        biofs)
            pid=$(_scratch_daemon_pid) || _fail "no biofs daemon serves $SCRATCH_MNT"
            _log "SIGKILL biofs pid $pid"
            kill -KILL "$pid"
            for ((i = 0; i < 200; i++)); do
                [ -d "/proc/$pid" ] || break
                sleep 0.05
            done
            [ -d "/proc/$pid" ] && _fail "biofs pid $pid survived SIGKILL"
            ;;
        ext4)
            xfs_io -x -c "shutdown" "$SCRATCH_MNT" >>"$seqres.full" 2>&1 ||
                _fail "shutdown of $SCRATCH_MNT failed"
            ;;
        *) _fail "can't kill $FSTYP" ;;
    esac
    umount -l "$SCRATCH_MNT" >>"$seqres.full" 2>&1 || _fail "umount -l of the dead mount failed"
    if [ -n "${SCRATCH_IMAGE:-}" ] && [ -e "$SCRATCH_IMAGE" ]; then
        # ext4: the loop device goes when the last user of the mount does.
        flock "$SCRATCH_IMAGE" true
    fi
}

# _scratch_wait_free: after _scratch_kill_daemon and once the processes
# that used the dead mount are gone, wait (up to 20 s) until its image is
# free to mount again (ext4: the loop device of the lazily unmounted
# filesystem goes away with its last user).
_scratch_wait_free() {
    local i
    [ "$FSTYP" = ext4 ] || return 0
    for ((i = 0; i < 80; i++)); do
        [ -z "$(losetup -j "$SCRATCH_IMAGE" 2>/dev/null)" ] && return 0
        sleep 0.25
    done
    _fail "the dead scratch mount still holds $SCRATCH_IMAGE"
}

# _killwork ...: the kill tests' workload and check (tests/generic/killwork.py).
_killwork() { python3 "$here/tests/generic/killwork.py" "$@"; }
