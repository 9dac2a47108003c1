//! `Butterflies::Stats`: the shared stats region (`crate::stats`), for the
//! Ruby side: the master makes it, gives each process a slot, retires a
//! gone worker's slot, and reads every figure for `/stats` and `/metrics`.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use magnus::{function, method, prelude::*, Error, RHash, RModule, Ruby};

use super::errors::{ExtError, OrRaise};
use crate::stats::{self, Health, Region, Slot};

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("Stats", ruby.class_object())?;
    class.define_singleton_method("create", function!(Stats::create, 0))?;
    class.define_singleton_method("adopt", function!(Stats::adopt, 1))?;
    class.define_method("fd_for_exec", method!(Stats::fd_for_exec, 0))?;
    class.define_method("allocate", method!(Stats::allocate, 1))?;
    class.define_method("attach", method!(Stats::attach, 1))?;
    class.define_method("retire", method!(Stats::retire, 1))?;
    class.define_singleton_method("beat", function!(Stats::beat, 1))?;
    class.define_method("last_beat", method!(Stats::last_beat, 1))?;
    class.const_set("MAX_WORKERS", stats::region::MAX_WORKERS)?;
    let gauges = ruby.ary_new();
    for (name, _) in stats::VALUES
        .iter()
        .filter(|(_, kind)| *kind == stats::Kind::Gauge)
    {
        let name = ruby.str_new(name);
        name.freeze();
        gauges.push(name)?;
    }
    gauges.freeze();
    class.const_set("GAUGES", gauges)?;
    class.define_method("count_restart", method!(Stats::count_restart, 1))?;
    class.define_method("draining=", method!(Stats::set_draining, 1))?;
    class.define_method("set_memory", method!(Stats::set_memory, 2))?;
    class.define_method("snapshot", method!(Stats::snapshot, 0))?;
    let buckets = ruby.ary_from_iter(stats::BUCKETS_US.iter().map(|&us| us as f64 / 1e6));
    class.const_set("BUCKETS_SECONDS", buckets)?;
    Ok(())
}

#[magnus::wrap(class = "Butterflies::Stats", free_immediately, size)]
pub struct Stats(Region);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Stats {
    /// A new region (a cluster master, or single mode, at boot).
    pub fn create(ruby: &Ruby) -> Result<Self, Error> {
        Region::create()
            .map(Stats)
            .map_err(ExtError::Io)
            .or_raise(ruby)
    }

    /// The region behind an inherited memfd.
    pub fn adopt(ruby: &Ruby, fd: i32) -> Result<Self, Error> {
        // SAFETY: the Ruby side passes the memfd a previous master or the
        // master of this worker kept across exec, which nothing else in
        // this process owns.
        unsafe { Region::adopt(fd) }
            .map(Stats)
            .map_err(ExtError::Io)
            .or_raise(ruby)
    }

    pub fn fd_for_exec(ruby: &Ruby, rb_self: &Self) -> Result<i32, Error> {
        rb_self.0.fd_for_exec().map_err(ExtError::Io).or_raise(ruby)
    }

    /// A slot for a process serving worker `index` (-1: single mode), or
    /// nil when every slot is taken (the master waits for one to free).
    pub fn allocate(&self, index: i64) -> Option<usize> {
        let index = u64::try_from(index).unwrap_or(u64::MAX);
        self.0.allocate(index, now_ms())
    }

    /// Makes slot `at` this process's (in the child, after the fork).
    pub fn attach(&self, at: usize) {
        if let Some(slot) = self.0.slot(at) {
            slot.pid
                .store(u64::from(std::process::id()), Ordering::Relaxed);
            stats::attach(slot, self.0.draining_flag());
        }
    }

    pub fn retire(&self, at: usize) {
        self.0.retire(at);
    }

    /// This process's heartbeat (`"ready"` or `"stuck"`), in the slot it
    /// attached; the master reads it as an age (`snapshot`, `beats`).
    pub fn beat(ruby: &Ruby, health: String) -> Result<(), Error> {
        let health = match health.as_str() {
            "ready" => Health::Ready,
            "stuck" => Health::Stuck,
            other => {
                return Err(Error::new(
                    ruby.exception_arg_error(),
                    format!("no such health: {other}"),
                ))
            }
        };
        stats::beat(health);
        Ok(())
    }

    /// Slot `at`'s last heartbeat: `[seconds ago, :booting | :ready |
    /// :stuck]`, read by the master after it woke (time it lost itself is
    /// not a worker's), or nil for a slot out of range.
    pub fn last_beat(ruby: &Ruby, rb_self: &Self, at: usize) -> Option<(f64, magnus::Symbol)> {
        let (age_ms, health) = rb_self.0.slot(at)?.last_beat();
        Some((age_ms as f64 / 1e3, ruby.to_symbol(health.name())))
    }

    /// Every process's responses close their connections while set.
    pub fn set_draining(&self, draining: bool) {
        self.0
            .draining_flag()
            .store(u64::from(draining), Ordering::Relaxed);
    }

    /// `set_memory(slot, bytes)`: the private memory the master measured
    /// for the process in `slot` (the `worker_memory_bytes` gauge).
    pub fn set_memory(&self, at: usize, bytes: u64) {
        if let Some(slot) = self.0.slot(at) {
            slot.set(stats::MEMORY_BYTES, bytes);
        }
    }

    pub fn count_restart(&self, reason: String) {
        if let Some(i) = stats::RESTARTS.iter().position(|r| *r == reason) {
            self.0.count_restart(i);
        }
    }

    /// Every figure: `{live: [{slot:, pid:, index:, started_ms:,
    /// beat_age: (seconds), health: (:booting, :ready, :stuck), values: {...}, histograms: {...}}], retired: {index =>
    /// {values:, histograms:}}, restarts: {...}}`.
    pub fn snapshot(ruby: &Ruby, rb_self: &Self) -> Result<RHash, Error> {
        let region = &rb_self.0;
        let live = ruby.ary_new();
        for (at, slot) in region.live() {
            let h = figures(ruby, slot)?;
            h.aset(ruby.to_symbol("slot"), at)?;
            h.aset(ruby.to_symbol("pid"), slot.pid.load(Ordering::Relaxed))?;
            let index = slot.index.load(Ordering::Relaxed);
            h.aset(ruby.to_symbol("index"), i64::try_from(index).unwrap_or(-1))?;
            h.aset(
                ruby.to_symbol("started_ms"),
                slot.started_ms.load(Ordering::Relaxed),
            )?;
            let (age_ms, health) = slot.last_beat();
            h.aset(ruby.to_symbol("beat_age"), age_ms as f64 / 1e3)?;
            h.aset(ruby.to_symbol("health"), ruby.to_symbol(health.name()))?;
            live.push(h)?;
        }
        let retired = ruby.hash_new();
        for index in 0..crate::stats::region::MAX_INDEXES {
            if let Some(slot) = region.retired(index) {
                if (0..stats::VALUE_COUNT).any(|i| slot.value(i) != 0) {
                    retired.aset(index, figures(ruby, slot)?)?;
                }
            }
        }
        let restarts = ruby.hash_new();
        for (i, reason) in stats::RESTARTS.iter().enumerate() {
            restarts.aset(*reason, region.restarts(i))?;
        }
        let all = ruby.hash_new();
        all.aset(ruby.to_symbol("live"), live)?;
        all.aset(ruby.to_symbol("retired"), retired)?;
        all.aset(ruby.to_symbol("restarts"), restarts)?;
        Ok(all)
    }
}

/// A slot's values and histograms as Ruby Hashes.
fn figures(ruby: &Ruby, slot: &Slot) -> Result<RHash, Error> {
    let values = ruby.hash_new();
    for (i, (name, _)) in stats::VALUES.iter().enumerate() {
        let v = slot.value(i);
        // Gauges are wrapping sums of +1/-1: read back as signed.
        let v = if stats::is_gauge(i) {
            v as i64 as i128
        } else {
            v as i128
        };
        values.aset(*name, v as i64)?;
    }
    let histograms = ruby.hash_new();
    for (i, name) in stats::HISTOGRAMS.iter().enumerate() {
        let (counts, sum_us) = slot.histogram(i);
        let h = ruby.hash_new();
        h.aset(ruby.to_symbol("counts"), ruby.ary_from_iter(counts))?;
        h.aset(ruby.to_symbol("sum_seconds"), sum_us as f64 / 1e6)?;
        histograms.aset(*name, h)?;
    }
    let h = ruby.hash_new();
    h.aset(ruby.to_symbol("values"), values)?;
    h.aset(ruby.to_symbol("histograms"), histograms)?;
    Ok(h)
}
