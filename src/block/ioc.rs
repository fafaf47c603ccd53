//! I/O priorities and io_contexts.
//!
//! Counterpart of `include/uapi/linux/ioprio.h`, `block/blk-ioc.c` and
//! `block/ioprio.c`. An [`IoContext`] belongs to a process and is shared by
//! its threads (as `CLONE_IO` threads share one in the kernel); it is
//! reference-counted (`Arc`) and dropped with its last user. Its priority is
//! read from the kernel with `ioprio_get(2)`, so `ionice -c3 program` is
//! honoured by the scheduler for every bio that program's requests cause.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::sys;

/// The scheduling class of an I/O priority (`IOPRIO_CLASS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IoPrioClass {
    /// No class set: treated as best-effort with a level derived from nice.
    None = 0,
    /// Real time: served before everything else.
    RealTime = 1,
    /// Best effort: the default.
    BestEffort = 2,
    /// Idle: served only when nothing else waits (or its deadline passes).
    Idle = 3,
}

/// Number of levels within a class (`IOPRIO_NR_LEVELS`).
pub const IOPRIO_NR_LEVELS: u8 = 8;
const IOPRIO_CLASS_SHIFT: u16 = 13;

/// An I/O priority: a class and a level (0 is the highest of 8 levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoPrio {
    class: IoPrioClass,
    level: u8,
}

impl IoPrio {
    /// The kernel's default, `IOPRIO_DEFAULT`: best effort, level 4.
    pub const DEFAULT: IoPrio = IoPrio {
        class: IoPrioClass::BestEffort,
        level: 4,
    };
    /// No priority set: the bio takes its submitter's at submission.
    pub const NONE: IoPrio = IoPrio {
        class: IoPrioClass::None,
        level: 0,
    };

    /// A priority; `None` if `level` is out of range.
    pub fn new(class: IoPrioClass, level: u8) -> Option<IoPrio> {
        (level < IOPRIO_NR_LEVELS).then_some(IoPrio { class, level })
    }

    /// Decode the kernel's 16-bit encoding (`IOPRIO_PRIO_VALUE`); `None` for
    /// an unknown class or level.
    pub fn from_raw(raw: u16) -> Option<IoPrio> {
        let class = match raw >> IOPRIO_CLASS_SHIFT {
            0 => IoPrioClass::None,
            1 => IoPrioClass::RealTime,
            2 => IoPrioClass::BestEffort,
            3 => IoPrioClass::Idle,
            _ => return None,
        };
        let level = raw & ((1 << IOPRIO_CLASS_SHIFT) - 1);
        if class == IoPrioClass::None {
            return Some(IoPrio::NONE);
        }
        IoPrio::new(class, u8::try_from(level).ok()?)
    }

    /// The kernel's 16-bit encoding.
    pub fn to_raw(self) -> u16 {
        ((self.class as u16) << IOPRIO_CLASS_SHIFT) | u16::from(self.level)
    }

    pub fn class(self) -> IoPrioClass {
        self.class
    }

    pub fn level(self) -> u8 {
        self.level
    }

    /// The class the scheduler uses: `None` counts as best effort.
    pub fn sched_class(self) -> SchedClass {
        match self.class {
            IoPrioClass::RealTime => SchedClass::Rt,
            IoPrioClass::None | IoPrioClass::BestEffort => SchedClass::Be,
            IoPrioClass::Idle => SchedClass::Idle,
        }
    }

    /// The best-effort priority a task with this nice value gets when it has
    /// no class set (`task_nice_ioprio()`: level = (nice + 20) / 5).
    pub fn from_nice(nice: i32) -> IoPrio {
        let level = ((nice.clamp(-20, 19) + 20) / 5) as u8;
        IoPrio {
            class: IoPrioClass::BestEffort,
            level,
        }
    }
}

impl fmt::Display for IoPrio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.class {
            IoPrioClass::None => f.write_str("none"),
            IoPrioClass::RealTime => write!(f, "rt/{}", self.level),
            IoPrioClass::BestEffort => write!(f, "be/{}", self.level),
            IoPrioClass::Idle => f.write_str("idle"),
        }
    }
}

/// The three queues of the dispatcher, highest priority first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SchedClass {
    Rt = 0,
    Be = 1,
    Idle = 2,
}

impl SchedClass {
    pub const ALL: [SchedClass; 3] = [SchedClass::Rt, SchedClass::Be, SchedClass::Idle];

    pub fn index(self) -> usize {
        self as usize
    }

    /// This class's entry of a per-class array (by pattern: no bounds
    /// check that could fail).
    pub fn of<T>(self, per_class: &[T; 3]) -> &T {
        let [rt, be, idle] = per_class;
        match self {
            SchedClass::Rt => rt,
            SchedClass::Be => be,
            SchedClass::Idle => idle,
        }
    }

    /// [`SchedClass::of`], mutably.
    pub fn of_mut<T>(self, per_class: &mut [T; 3]) -> &mut T {
        let [rt, be, idle] = per_class;
        match self {
            SchedClass::Rt => rt,
            SchedClass::Be => be,
            SchedClass::Idle => idle,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SchedClass::Rt => "rt",
            SchedClass::Be => "be",
            SchedClass::Idle => "idle",
        }
    }
}

/// A thread's attachment to its process's context: counted in
/// `nr_tasks` while the thread lives.
struct TaskRef(Arc<IoContext>);

impl TaskRef {
    fn attach(ioc: Arc<IoContext>) -> TaskRef {
        ioc.nr_tasks.fetch_add(1, Ordering::Relaxed);
        TaskRef(ioc)
    }
}

impl Drop for TaskRef {
    fn drop(&mut self) {
        self.0.nr_tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

thread_local! {
    static CURRENT_IOC: TaskRef = TaskRef::attach(IocRegistry::global().get_or_create(std::process::id() as i32));
}

/// How often the calling process's priority is re-read from the kernel.
const REFRESH_MS: u64 = 1000;

fn now_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A process's I/O context. Counterpart of `struct io_context`.
pub struct IoContext {
    pid: i32,
    ioprio: AtomicU16,
    nr_tasks: AtomicUsize,
    /// When the priority was last read from the kernel (`now_ms()`).
    refreshed_ms: AtomicU64,
}

impl IoContext {
    /// A context for `pid` with a given priority, not read from the kernel.
    pub fn with_ioprio(pid: i32, ioprio: IoPrio) -> Arc<IoContext> {
        Arc::new(IoContext {
            pid,
            ioprio: AtomicU16::new(ioprio.to_raw()),
            nr_tasks: AtomicUsize::new(0),
            refreshed_ms: AtomicU64::new(now_ms()),
        })
    }

    /// A new context for task `pid`, its priority read from the kernel
    /// (`ioprio_get(IOPRIO_WHO_PROCESS, pid)`; a task with no class set gets
    /// best effort at the level its nice value implies, as the kernel does).
    ///
    /// Fails with the kernel's errno (`ESRCH` for no such task).
    pub fn for_pid(pid: i32) -> io::Result<Arc<IoContext>> {
        let ioprio = task_ioprio(pid)?;
        Ok(IoContext::with_ioprio(pid, ioprio))
    }

    /// The calling process's context, shared by all its threads.
    pub fn current() -> Arc<IoContext> {
        CURRENT_IOC.with(|t| Arc::clone(&t.0))
    }

    /// The calling process's priority (`get_current_ioprio()`), without
    /// taking a reference. Re-read from the kernel at most once a second, so
    /// an `ionice -p` on a running process takes effect.
    pub fn current_ioprio() -> IoPrio {
        CURRENT_IOC.with(|t| {
            let ioc = &t.0;
            let last = ioc.refreshed_ms.load(Ordering::Relaxed);
            let now = now_ms();
            if now.saturating_sub(last) >= REFRESH_MS
                && ioc
                    .refreshed_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                if let Err(e) = ioc.refresh() {
                    log::debug!(
                        "io_context of pid {}: can't re-read the priority: {e}",
                        ioc.pid
                    );
                }
            }
            ioc.ioprio()
        })
    }

    /// The process this context belongs to.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn ioprio(&self) -> IoPrio {
        IoPrio::from_raw(self.ioprio.load(Ordering::Relaxed)).unwrap_or(IoPrio::DEFAULT)
    }

    pub fn set_ioprio(&self, ioprio: IoPrio) {
        self.ioprio.store(ioprio.to_raw(), Ordering::Relaxed);
    }

    /// Re-read the priority from the kernel (after an `ionice -p`).
    pub fn refresh(&self) -> io::Result<()> {
        self.set_ioprio(task_ioprio(self.pid)?);
        self.refreshed_ms.store(now_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// Number of threads of this process attached to the context through
    /// [`IoContext::current`] and still alive (`ioc->nr_tasks`).
    pub fn nr_tasks(&self) -> usize {
        self.nr_tasks.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for IoContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IoContext(pid {}, {}, tasks {})",
            self.pid,
            self.ioprio(),
            self.nr_tasks()
        )
    }
}

/// The priority the kernel reports for a task, with `IOPRIO_CLASS_NONE`
/// resolved as the kernel does (`task_nice_ioclass()` and
/// `task_nice_ioprio()`): SCHED_IDLE tasks are idle, real-time tasks RT,
/// others best effort, at the level their nice value implies.
fn task_ioprio(pid: i32) -> io::Result<IoPrio> {
    let raw = sys::ioprio_get_process(pid)?;
    if let Some(p) = IoPrio::from_raw(raw).filter(|p| p.class() != IoPrioClass::None) {
        return Ok(p);
    }
    let level = IoPrio::from_nice(sys::nice_of(pid)?).level();
    let class = match sys::sched_policy(pid)? {
        libc::SCHED_IDLE => IoPrioClass::Idle,
        libc::SCHED_FIFO | libc::SCHED_RR => IoPrioClass::RealTime,
        _ => IoPrioClass::BestEffort,
    };
    Ok(IoPrio { class, level })
}

/// The contexts of the processes seen so far, one per thread group, kept
/// only while someone holds them. `get_task_io_context()` in spirit: the
/// lookup creates the context on first use.
pub struct IocRegistry {
    map: Mutex<HashMap<i32, Weak<IoContext>>>,
    /// Priorities answered by [`IocRegistry::task_ioprio`], by task, with
    /// when they were read.
    seen: Mutex<HashMap<i32, (IoPrio, std::time::Instant)>>,
}

/// How long [`IocRegistry::task_ioprio`] keeps an answer (as the
/// process's own priority is re-read at most once a second).
const TASK_IOPRIO_TTL: std::time::Duration = std::time::Duration::from_millis(REFRESH_MS);

impl IocRegistry {
    pub fn new() -> IocRegistry {
        IocRegistry {
            map: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The registry of this process.
    pub fn global() -> &'static IocRegistry {
        static GLOBAL: OnceLock<IocRegistry> = OnceLock::new();
        GLOBAL.get_or_init(IocRegistry::new)
    }

    /// The context of thread group `tgid`, created (priority read from the
    /// kernel) if none is alive. A task that no longer exists gets a
    /// default-priority context.
    pub fn get_or_create(&self, tgid: i32) -> Arc<IoContext> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ioc) = map.get(&tgid).and_then(Weak::upgrade) {
            return ioc;
        }
        let ioc = IoContext::for_pid(tgid)
            .unwrap_or_else(|_| IoContext::with_ioprio(tgid, IoPrio::DEFAULT));
        if map.len() > 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(tgid, Arc::downgrade(&ioc));
        ioc
    }

    /// The priority of task (thread) `tid`'s context, for an I/O made on
    /// its behalf (a FUSE request's caller). Finding the thread group reads
    /// `/proc`, so an answer is kept for a second: an `ionice -p` takes
    /// effect within that.
    pub fn task_ioprio(&self, tid: i32) -> IoPrio {
        let now = std::time::Instant::now();
        let seen = || self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(p, at)) = seen().get(&tid) {
            if now.duration_since(at) < TASK_IOPRIO_TTL {
                return p;
            }
        }
        let p = self.for_task(tid).ioprio();
        let mut map = seen();
        if map.len() > 4096 {
            map.retain(|_, (_, at)| now.duration_since(*at) < TASK_IOPRIO_TTL);
        }
        map.insert(tid, (p, now));
        p
    }

    /// The context for the task (thread) `tid`: its thread group's context.
    pub fn for_task(&self, tid: i32) -> Arc<IoContext> {
        let tgid = sys::tgid_of(tid).unwrap_or(tid);
        self.get_or_create(tgid)
    }
}

impl Default for IocRegistry {
    fn default() -> IocRegistry {
        IocRegistry::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_encoding_round_trips() {
        for class in [
            IoPrioClass::RealTime,
            IoPrioClass::BestEffort,
            IoPrioClass::Idle,
        ] {
            for level in 0..IOPRIO_NR_LEVELS {
                let p = IoPrio::new(class, level).unwrap();
                assert_eq!(IoPrio::from_raw(p.to_raw()), Some(p));
            }
        }
        assert_eq!(IoPrio::DEFAULT.to_raw(), (2 << 13) | 4);
        assert_eq!(IoPrio::from_raw(4 << 13), None, "class 4 does not exist");
        assert_eq!(IoPrio::new(IoPrioClass::BestEffort, 8), None);
    }

    #[test]
    fn nice_maps_to_best_effort_levels() {
        assert_eq!(IoPrio::from_nice(0), IoPrio::DEFAULT);
        assert_eq!(IoPrio::from_nice(-20).level(), 0);
        assert_eq!(IoPrio::from_nice(19).level(), 7);
        assert_eq!(IoPrio::NONE.sched_class(), SchedClass::Be);
    }

    #[test]
    fn threads_of_one_process_share_a_context() {
        let reg = IocRegistry::new();
        let me = std::process::id() as i32;
        let a = reg.get_or_create(me);
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tid_tx.send(sys::gettid()).unwrap();
            done_rx.recv().ok();
        });
        let tid = tid_rx.recv().unwrap();
        assert_ne!(tid, me);
        let b = reg.for_task(tid);
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "a thread's context is its process's");
        let old = Arc::downgrade(&a);
        drop((a, b));
        assert!(
            old.upgrade().is_none(),
            "the context was freed with its last user"
        );
        let c = reg.get_or_create(me);
        assert_eq!(
            Arc::strong_count(&c),
            1,
            "a new one is made on the next lookup"
        );
    }

    #[test]
    fn nr_tasks_counts_attached_threads_while_they_live() {
        let ioc = IoContext::current();
        let before = ioc.nr_tasks();
        assert!(before >= 1, "this thread is attached");
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let mine = IoContext::current();
            tx.send(Arc::as_ptr(&mine) as usize).unwrap();
            go_rx.recv().ok();
        });
        assert_eq!(
            rx.recv().unwrap(),
            Arc::as_ptr(&ioc) as usize,
            "shared by the threads"
        );
        assert!(ioc.nr_tasks() > before);
        go_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(
            ioc.nr_tasks() <= before,
            "a thread that exits is no longer counted"
        );
    }

    #[test]
    fn no_class_follows_the_scheduling_policy() {
        let mut child = std::process::Command::new("chrt")
            .args(["-i", "0", "sleep", "5"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let ioc = IoContext::for_pid(child.id() as i32).unwrap();
        child.kill().ok();
        child.wait().ok();
        assert_eq!(
            ioc.ioprio().class(),
            IoPrioClass::Idle,
            "a SCHED_IDLE task is idle"
        );
    }

    #[test]
    fn priority_is_read_from_the_kernel() {
        // Make a child idle with ionice's syscall, then read it back.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let idle = IoPrio::new(IoPrioClass::Idle, 0).unwrap();
        sys::ioprio_set_process(pid, idle.to_raw()).unwrap();
        let ioc = IoContext::for_pid(pid).unwrap();
        assert_eq!(ioc.ioprio().class(), IoPrioClass::Idle);
        let rt = IoPrio::new(IoPrioClass::BestEffort, 1).unwrap();
        sys::ioprio_set_process(pid, rt.to_raw()).unwrap();
        ioc.refresh().unwrap();
        assert_eq!(ioc.ioprio(), rt);
        child.kill().ok();
        child.wait().ok();
        let err = IoContext::for_pid(i32::MAX).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }
}
