//! Priority scheduling through a real queue: classes are honoured, no class
//! starves, and `ionice -c3` on a process using the engine reaches the
//! scheduler.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use biofs::block::backend::BlockBackend;
use biofs::block::ioc::SchedClass;
use biofs::block::{
    Bio, IoContext, IoPrio, IoPrioClass, Page, Queue, QueueConfig, ReqOp, Sector, PAGE_SIZE,
};
use common::CheckedBackend;

fn read_bio(sector: u64, class: IoPrioClass) -> Bio {
    let mut b = Bio::new(ReqOp::Read, Sector(sector), 1);
    b.add_page(Page::new(), PAGE_SIZE as u32, 0);
    b.set_ioprio(IoPrio::new(class, 0).unwrap());
    b
}

#[test]
fn an_idle_reader_is_served_within_its_deadline_under_an_rt_flood() {
    let dev = CheckedBackend::new(64 << 20);
    *dev.delay.lock().unwrap() = Duration::from_millis(1);
    let idle_expire = Duration::from_millis(300);
    let config = QueueConfig {
        nr_workers: 1,
        queue_depth: 1,
        expire: [
            Duration::from_millis(25),
            Duration::from_millis(250),
            idle_expire,
        ],
        ..QueueConfig::default()
    };
    let q = Arc::new(Queue::new(Arc::clone(&dev) as Arc<dyn BlockBackend>, config).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    // RT flood: keep ~64 RT reads queued at all times for 1.5 s.
    let flood = {
        let (q, stop) = (Arc::clone(&q), Arc::clone(&stop));
        std::thread::spawn(move || {
            let inflight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let start = Instant::now();
            let mut i = 0u64;
            while start.elapsed() < Duration::from_millis(1500) && !stop.load(Ordering::Relaxed) {
                if inflight.load(Ordering::Relaxed) < 64 {
                    let mut b = read_bio((i % 1000) * 16, IoPrioClass::RealTime);
                    let f = Arc::clone(&inflight);
                    b.set_end_io(move |_| {
                        f.fetch_sub(1, Ordering::Relaxed);
                    });
                    inflight.fetch_add(1, Ordering::Relaxed);
                    q.submit_bio(b);
                    i += 1;
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let submitted = Instant::now();
    let done_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut idle = read_bio(50_000, IoPrioClass::Idle);
    let d = Arc::clone(&done_at);
    idle.set_end_io(move |_| *d.lock().unwrap() = Some(Instant::now()));
    q.submit_bio(idle);
    flood.join().unwrap();
    q.drain();
    let waited = done_at
        .lock()
        .unwrap()
        .expect("the idle read completed")
        .duration_since(submitted);
    // Bound: its deadline, plus the requests with earlier deadlines ahead of
    // it (RT requests queued before it expired, at ~1 ms each, at most the
    // 64 the flood keeps queued), plus scheduling slack on a busy machine.
    let bound = idle_expire + Duration::from_millis(64 + 250);
    assert!(
        waited >= idle_expire - Duration::from_millis(50),
        "idle was not starved-first: served after {waited:?}, i.e. before RT"
    );
    assert!(
        waited <= bound,
        "idle starved: waited {waited:?}, bound {bound:?}"
    );
    assert!(
        waited < Duration::from_millis(1400),
        "served while the RT flood was still running"
    );
    let s = q.stats();
    assert_eq!(s.class(SchedClass::Idle).dispatched, 1);
    assert!(s.class(SchedClass::Rt).dispatched > 500);
}

#[test]
fn rt_requests_are_dispatched_before_waiting_be_requests() {
    let dev = CheckedBackend::new(16 << 20);
    *dev.delay.lock().unwrap() = Duration::from_millis(2);
    let config = QueueConfig {
        nr_workers: 1,
        queue_depth: 1,
        ..QueueConfig::default()
    };
    let q = Queue::new(Arc::clone(&dev) as Arc<dyn BlockBackend>, config).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    // The first BE read occupies the device; the rest queue up behind it.
    for i in 0..10u64 {
        let class = if i % 2 == 0 {
            IoPrioClass::BestEffort
        } else {
            IoPrioClass::RealTime
        };
        let mut b = read_bio(i * 64, class);
        let o = Arc::clone(&order);
        b.set_end_io(move |_| o.lock().unwrap().push(class));
        q.submit_bio(b);
    }
    q.drain();
    let order = order.lock().unwrap().clone();
    let first_be_after_start = order
        .iter()
        .skip(1)
        .position(|c| *c == IoPrioClass::BestEffort)
        .unwrap()
        + 1;
    assert!(
        order[1..first_be_after_start]
            .iter()
            .all(|c| *c == IoPrioClass::RealTime),
        "{order:?}"
    );
    assert_eq!(
        first_be_after_start, 6,
        "all five RT reads went before the queued BE ones: {order:?}"
    );
}

/// Run by `ionice_c3_is_honoured`, in a child process started under
/// `ionice -c3`: submits one bio without setting a priority and prints the
/// class the scheduler counted it in.
#[test]
#[ignore = "helper: run by ionice_c3_is_honoured in a child process"]
fn ionice_child() {
    let dev = CheckedBackend::new(1 << 20);
    let q = Queue::new(
        Arc::clone(&dev) as Arc<dyn BlockBackend>,
        QueueConfig::default(),
    )
    .unwrap();
    let mut b = Bio::new(ReqOp::Write, Sector(0), 1);
    b.add_page(Page::new(), PAGE_SIZE as u32, 0);
    let b = q.submit_bio_wait(b);
    let s = q.stats();
    println!(
        "CHILD ioc={} bio={} idle_dispatched={} be_dispatched={}",
        IoContext::current().ioprio(),
        b.ioprio(),
        s.class(SchedClass::Idle).dispatched,
        s.class(SchedClass::Be).dispatched
    );
}

#[test]
fn ionice_c3_is_honoured() {
    let exe = std::env::current_exe().unwrap();
    let run = |ionice: &[&str]| {
        let out = std::process::Command::new("ionice")
            .args(ionice)
            .arg(&exe)
            .args([
                "--exact",
                "ionice_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .output()
            .expect("ionice (util-linux) is installed");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        stdout
            .lines()
            .find_map(|l| l.find("CHILD").map(|i| l[i..].to_string()))
            .unwrap_or_default()
    };
    let idle = run(&["-c3"]);
    assert_eq!(
        idle, "CHILD ioc=idle bio=idle idle_dispatched=1 be_dispatched=0",
        "under ionice -c3"
    );
    let be = run(&["-c2", "-n1"]);
    assert_eq!(
        be, "CHILD ioc=be/1 bio=be/1 idle_dispatched=0 be_dispatched=1",
        "under ionice -c2 -n1"
    );
}
