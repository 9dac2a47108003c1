//! The shared region: a memfd mapped `MAP_SHARED`, holding a header that
//! names the layout, the slots of the live serving processes (each with
//! the heartbeat its own process writes), the retired totals per worker
//! index, and the master's restart counters. Every field is an
//! `AtomicU64`, so any process may read or add to any of it at any time.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{BUCKETS_US, BUCKET_COUNT, HISTOGRAM_COUNT, RESTARTS, VALUE_COUNT};

/// Live processes at once (workers of every generation, or single mode):
/// twice [`MAX_WORKERS`], so restarts that briefly run a worker beside the
/// one it replaces never run out.
pub const MAX_SLOTS: usize = 2 * MAX_WORKERS;
/// The most workers a cluster may be configured with.
pub const MAX_WORKERS: usize = 256;
/// Retired totals are kept per worker index, and for single mode last.
pub const MAX_INDEXES: usize = MAX_WORKERS + 1;

/// "BFLYSTAT": the first word of every region.
const MAGIC: u64 = 0x4246_4c59_5354_4154;
/// Bumped whenever [`Layout`] changes: a hot restart into a build with
/// another layout starts a new region instead of misreading the old one.
const VERSION: u64 = 5;

/// What a serving process says of itself with each heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Forked, loading the app: no heartbeat yet.
    Booting = 0,
    /// Serving.
    Ready = 1,
    /// Serving, but an app thread is past `request_hard_timeout`.
    Stuck = 2,
}

impl Health {
    fn from_word(word: u64) -> Health {
        match word {
            1 => Health::Ready,
            2 => Health::Stuck,
            _ => Health::Booting,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Health::Booting => "booting",
            Health::Ready => "ready",
            Health::Stuck => "stuck",
        }
    }
}

/// Milliseconds on CLOCK_MONOTONIC, which every process of the machine
/// shares: a beat written by one is an age to another.
pub fn monotonic_ms() -> u64 {
    let mut now = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, and nothing else.
    if unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return 0;
    }
    u64::try_from(now.tv_sec).unwrap_or(0) * 1000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000
}

/// One process's figures.
#[repr(C)]
pub struct Slot {
    /// Non-zero while a process has it.
    pub used: AtomicU64,
    pub pid: AtomicU64,
    pub index: AtomicU64,
    /// Unix time, milliseconds, when the process took it.
    pub started_ms: AtomicU64,
    /// Monotonic milliseconds ([`monotonic_ms`]) of its last heartbeat,
    /// written by the process itself (the master sets it once, at
    /// allocation, so a booting worker's age counts from its fork).
    pub beat_ms: AtomicU64,
    /// Its [`Health`] as of that heartbeat.
    pub health: AtomicU64,
    pub values: [AtomicU64; VALUE_COUNT],
    /// Per histogram: a count per bucket, then +Inf, then the sum (us).
    pub histograms: [[AtomicU64; BUCKET_COUNT + 2]; HISTOGRAM_COUNT],
}

#[repr(C)]
struct Layout {
    magic: AtomicU64,
    version: AtomicU64,
    slots: [Slot; MAX_SLOTS],
    retired: [Slot; MAX_INDEXES],
    restarts: [AtomicU64; RESTARTS.len()],
    /// Non-zero while the server drains (`drain_delay`): every process's
    /// responses close their connections.
    draining: AtomicU64,
}

impl Slot {
    pub fn add(&self, index: usize, n: u64) {
        if let Some(v) = self.values.get(index) {
            v.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn set(&self, index: usize, n: u64) {
        if let Some(v) = self.values.get(index) {
            v.store(n, Ordering::Relaxed);
        }
    }

    /// The process's heartbeat: it lives, in this health.
    pub fn beat(&self, health: Health) {
        self.health.store(health as u64, Ordering::Relaxed);
        self.beat_ms.store(monotonic_ms(), Ordering::Release);
    }

    /// Milliseconds since the last heartbeat, and the health it gave.
    pub fn last_beat(&self) -> (u64, Health) {
        let at = self.beat_ms.load(Ordering::Acquire);
        let health = Health::from_word(self.health.load(Ordering::Relaxed));
        (monotonic_ms().saturating_sub(at), health)
    }

    pub fn value(&self, index: usize) -> u64 {
        self.values
            .get(index)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    pub fn observe(&self, index: usize, d: Duration) {
        let Some(h) = self.histograms.get(index) else {
            return;
        };
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US
            .iter()
            .position(|&le| us <= le)
            .unwrap_or(BUCKET_COUNT);
        h[bucket].fetch_add(1, Ordering::Relaxed);
        h[BUCKET_COUNT + 1].fetch_add(us, Ordering::Relaxed);
    }

    /// Histogram `index`: per-bucket counts (+Inf last) and the sum in us.
    pub fn histogram(&self, index: usize) -> (Vec<u64>, u64) {
        let Some(h) = self.histograms.get(index) else {
            return (Vec::new(), 0);
        };
        let counts = h[..=BUCKET_COUNT]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        (counts, h[BUCKET_COUNT + 1].load(Ordering::Relaxed))
    }

    fn clear(&self) {
        for v in &self.values {
            v.store(0, Ordering::Relaxed);
        }
        for h in &self.histograms {
            for c in h {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Adds `other`'s counters and histograms (not its gauges) to this one.
    fn absorb(&self, other: &Slot) {
        for (i, v) in other.values.iter().enumerate() {
            if !super::is_gauge(i) {
                self.values[i].fetch_add(v.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        for (mine, theirs) in self.histograms.iter().zip(&other.histograms) {
            for (m, t) in mine.iter().zip(theirs) {
                m.fetch_add(t.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }
}

/// The mapped region, for the process that owns the memfd.
pub struct Region {
    layout: &'static Layout,
    fd: OwnedFd,
}

impl Region {
    /// A new, zeroed region.
    pub fn create() -> io::Result<Region> {
        let name = c"butterflies-stats";
        // SAFETY: a valid C string and flags; the result is checked.
        let fd = unsafe { nix::libc::memfd_create(name.as_ptr(), nix::libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create just returned this descriptor; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = std::mem::size_of::<Layout>();
        let len_off = nix::libc::off_t::try_from(len).map_err(io::Error::other)?;
        // SAFETY: ftruncate on the memfd we own; zero-filled by the kernel.
        if unsafe { nix::libc::ftruncate(fd.as_raw_fd(), len_off) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let region = Self::map(fd)?;
        region.layout.version.store(VERSION, Ordering::Relaxed);
        region.layout.magic.store(MAGIC, Ordering::Release);
        Ok(region)
    }

    /// The region behind an inherited memfd (a hot restart, an exec'd
    /// worker).
    ///
    /// # Safety
    ///
    /// `fd` must be an open memfd made by [`Region::create`], owned by
    /// nothing else in this process.
    pub unsafe fn adopt(fd: RawFd) -> io::Result<Region> {
        // SAFETY: the caller passes an open descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut stat = std::mem::MaybeUninit::<nix::libc::stat>::uninit();
        // SAFETY: fstat fills `stat` on success, checked before reading it.
        if unsafe { nix::libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat succeeded, so `stat` is initialised.
        let size = unsafe { stat.assume_init() }.st_size;
        if usize::try_from(size).ok() != Some(std::mem::size_of::<Layout>()) {
            return Err(io::Error::other(
                "the inherited stats region has another size",
            ));
        }
        let region = Self::map(fd)?;
        let magic = region.layout.magic.load(Ordering::Acquire);
        let version = region.layout.version.load(Ordering::Relaxed);
        if magic != MAGIC || version != VERSION {
            return Err(io::Error::other(format!(
                "the inherited stats region has layout {version} (magic {magic:#x}), this build {VERSION}"
            )));
        }
        Ok(region)
    }

    fn map(fd: OwnedFd) -> io::Result<Region> {
        let len = std::mem::size_of::<Layout>();
        // SAFETY: mapping `len` bytes of a file of that size, shared,
        // read-write; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            nix::libc::mmap(
                std::ptr::null_mut(),
                len,
                nix::libc::PROT_READ | nix::libc::PROT_WRITE,
                nix::libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == nix::libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping is page-aligned, `len` bytes long, zero or
        // previously written only as this same layout of AtomicU64s (all
        // bit patterns valid), and never unmapped: 'static holds.
        let layout = unsafe { &*(ptr as *const Layout) };
        Ok(Region { layout, fd })
    }

    /// The memfd, made to survive exec.
    pub fn fd_for_exec(&self) -> io::Result<RawFd> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: clearing FD_CLOEXEC on a descriptor we own.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }

    /// Takes a free slot for a process serving worker `index` (u64::MAX:
    /// single mode); zeroed.
    pub fn allocate(&self, index: u64, now_ms: u64) -> Option<usize> {
        let at = self.layout.slots.iter().position(|s| {
            s.used
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })?;
        let slot = &self.layout.slots[at];
        slot.clear();
        slot.pid.store(0, Ordering::Relaxed);
        slot.index.store(index, Ordering::Relaxed);
        slot.started_ms.store(now_ms, Ordering::Relaxed);
        slot.health.store(Health::Booting as u64, Ordering::Relaxed);
        slot.beat_ms.store(monotonic_ms(), Ordering::Release);
        Some(at)
    }

    pub fn slot(&self, at: usize) -> Option<&'static Slot> {
        self.layout.slots.get(at)
    }

    /// Slots in use.
    pub fn live(&self) -> impl Iterator<Item = (usize, &'static Slot)> {
        self.layout
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.used.load(Ordering::Acquire) != 0)
    }

    /// The retired totals of worker `index`.
    pub fn retired(&self, index: usize) -> Option<&'static Slot> {
        self.layout.retired.get(index)
    }

    /// A process is gone: its counters go to its index's retired totals,
    /// and the slot is free again.
    pub fn retire(&self, at: usize) {
        let Some(slot) = self.layout.slots.get(at) else {
            return;
        };
        let index = usize::try_from(slot.index.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        if let Some(retired) = self.layout.retired.get(index.min(MAX_INDEXES - 1)) {
            retired.absorb(slot);
        }
        slot.clear();
        slot.used.store(0, Ordering::Release);
    }

    /// The flag every process of the server reads for draining.
    pub fn draining_flag(&self) -> &'static AtomicU64 {
        &self.layout.draining
    }

    pub fn count_restart(&self, reason: usize) {
        if let Some(c) = self.layout.restarts.get(reason) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn restarts(&self, reason: usize) -> u64 {
        self.layout
            .restarts
            .get(reason)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_adds_to_the_parents_region() {
        let region = Region::create().unwrap();
        let at = region.allocate(0, 1).unwrap();
        let slot = region.slot(at).unwrap();
        // SAFETY: the child only touches atomics in the shared mapping and
        // exits with _exit; no lock or allocation is involved.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                slot.add(super::super::BYTES_OUT, 42);
                slot.observe(super::super::APP_TIME, Duration::from_millis(3));
                // SAFETY: _exit ends the child without running anything.
                unsafe { nix::libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
            }
        }
        assert_eq!(slot.value(super::super::BYTES_OUT), 42);
        let (counts, sum) = slot.histogram(super::super::APP_TIME);
        assert_eq!(counts.iter().sum::<u64>(), 1);
        assert_eq!(sum, 3000);
    }

    #[test]
    fn a_retired_slots_counters_stay_with_its_index() {
        let region = Region::create().unwrap();
        let first = region.allocate(1, 1).unwrap();
        region.slot(first).unwrap().add(1, 5);
        region
            .slot(first)
            .unwrap()
            .add(super::super::CONNECTIONS, 3);
        region.retire(first);
        let second = region.allocate(1, 2).unwrap();
        assert_eq!(second, first, "the slot is free again");
        assert_eq!(region.slot(second).unwrap().value(1), 0);
        let retired = region.retired(1).unwrap();
        assert_eq!(retired.value(1), 5);
        assert_eq!(
            retired.value(super::super::CONNECTIONS),
            0,
            "gauges are not kept"
        );
    }

    #[test]
    fn an_adopted_memfd_is_the_same_region() {
        let region = Region::create().unwrap();
        let at = region.allocate(0, 1).unwrap();
        region.slot(at).unwrap().add(0, 7);
        let dup = nix::unistd::dup(&region.fd).unwrap();
        // SAFETY: `dup` is a fresh descriptor of the memfd, owned by nothing.
        let again = unsafe { Region::adopt(std::os::fd::IntoRawFd::into_raw_fd(dup)) }.unwrap();
        assert_eq!(again.slot(at).unwrap().value(0), 7);
    }

    #[test]
    fn a_region_of_another_version_is_not_adopted() {
        let region = Region::create().unwrap();
        region.layout.version.store(VERSION + 1, Ordering::Relaxed);
        let dup = nix::unistd::dup(&region.fd).unwrap();
        // SAFETY: `dup` is a fresh descriptor of the memfd, owned by nothing.
        let again = unsafe { Region::adopt(std::os::fd::IntoRawFd::into_raw_fd(dup)) };
        let message = again.err().map(|e| e.to_string()).unwrap_or_default();
        let expected = format!("layout {}", VERSION + 1);
        assert!(message.contains(&expected), "{message}");
    }

    #[test]
    fn a_beat_is_an_age_and_a_health_to_every_reader() {
        let region = Region::create().unwrap();
        let at = region.allocate(0, 1).unwrap();
        let slot = region.slot(at).unwrap();
        assert_eq!(slot.last_beat().1, Health::Booting);
        slot.beat_ms
            .store(monotonic_ms() - 5_000, Ordering::Relaxed);
        assert!(slot.last_beat().0 >= 5_000);
        slot.beat(Health::Stuck);
        let (age, health) = slot.last_beat();
        assert!(age < 1_000, "{age}");
        assert_eq!(health, Health::Stuck);
    }
}
