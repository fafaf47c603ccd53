//! Raw syscalls, in one place. Every `unsafe` block here says why it is sound;
//! nothing outside this module calls into libc with raw pointers.

// ---- process and I/O priority (used by block::ioc) ----

const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// `ioprio_get(IOPRIO_WHO_PROCESS, pid)`: the raw 16-bit I/O priority of a task.
pub fn ioprio_get_process(pid: i32) -> std::io::Result<u16> {
    // SAFETY: ioprio_get takes two integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, pid) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret as u16)
}

/// `ioprio_set(IOPRIO_WHO_PROCESS, pid, raw)`.
pub fn ioprio_set_process(pid: i32, raw: u16) -> std::io::Result<()> {
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            pid,
            libc::c_int::from(raw),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The nice value of task `pid` (`getpriority(PRIO_PROCESS, pid)`).
pub fn nice_of(pid: i32) -> std::io::Result<i32> {
    let who =
        libc::id_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    nix::errno::Errno::clear();
    // SAFETY: getpriority takes integers only. It may legitimately return -1,
    // so errno is cleared first and checked after.
    let ret = unsafe { libc::getpriority(libc::PRIO_PROCESS, who) };
    if ret == -1 && nix::errno::Errno::last_raw() != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// The thread group (process) of task `tid`, from `/proc/TID/status`.
pub fn tgid_of(tid: i32) -> std::io::Result<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no Tgid in status"))
}
