//! Process-wide glibc malloc settings for a server that allocates and frees
//! request-sized buffers (bodies, Ruby strings) over and over.
//!
//! glibc trims the top of a heap back to the kernel once 128 KiB are free
//! there. In app threads (each has its own arena) every 64 KiB body freed at
//! the top of the arena was handed back with `madvise(MADV_DONTNEED)` and
//! page-faulted in again, zeroed, for the next request: 15% of a POST
//! 64 KiB run's samples. The settings here are the ones glibc's own dynamic
//! tuning reaches after the first 4 MiB block is freed, fixed from the
//! start: blocks under 4 MiB come from the arenas, and up to 8 MiB may stay
//! free at a heap's top. Measured in docs/PERFORMANCE.md ("Memory").
//!
//! glibc also gives threads arenas of their own, up to eight per core, and
//! each keeps its own free memory: with an IO thread and five app threads
//! a hello server peaked 1 MiB higher once the env template spread its
//! allocations, and 4 MiB higher than with one arena, for no throughput
//! (docs/PERFORMANCE.md, "Fewer instructions per request"). Two arenas, as
//! is often advised for Ruby (`MALLOC_ARENA_MAX=2`), unless the operator
//! says otherwise.

/// Largest block served from the arenas (larger ones are mmapped).
pub const MMAP_THRESHOLD_BYTES: i32 = 4 * 1024 * 1024;
/// Free bytes a heap's top may keep before glibc returns them.
pub const TRIM_THRESHOLD_BYTES: i32 = 8 * 1024 * 1024;
/// Arenas glibc may make for the process's threads.
pub const ARENAS: i32 = 2;

/// Applies the settings, unless the environment sets glibc's own
/// `MALLOC_*_` tunables (the operator's choice wins), and the arena count
/// unless it sets `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES`. Call before the
/// engine's threads start. Returns whether the thresholds were applied. A
/// no-op where the C library is not glibc.
pub fn keep_freed_memory() -> bool {
    let names: Vec<std::ffi::OsString> = std::env::vars_os().map(|(name, _)| name).collect();
    if !arenas_set_by_operator(names.iter().cloned()) {
        apply_arenas();
    }
    if tuned_by_operator(names.into_iter()) {
        return false;
    }
    apply()
}

/// Whether these environment variable names set glibc's arena count.
fn arenas_set_by_operator(mut names: impl Iterator<Item = std::ffi::OsString>) -> bool {
    names.any(|name| name == "MALLOC_ARENA_MAX" || name == "GLIBC_TUNABLES")
}

/// Whether these environment variable names tune glibc malloc.
fn tuned_by_operator(mut names: impl Iterator<Item = std::ffi::OsString>) -> bool {
    names.any(|name| {
        name.to_str().is_some_and(|n| {
            (n.starts_with("MALLOC_") && n.ends_with('_')) || n == "GLIBC_TUNABLES"
        })
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes allocator parameters; it is safe to call
    // at any time from any thread.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            && nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply_arenas() {
    // SAFETY: as in `apply`; arenas made before stay, later threads share
    // the ones there are once the count is reached.
    unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, ARENAS) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply_arenas() {}

#[cfg(test)]
mod tests {
    use super::{arenas_set_by_operator, tuned_by_operator};

    #[test]
    fn the_operators_malloc_settings_win() {
        let names = |list: &[&str]| {
            list.iter()
                .map(|n| n.into())
                .collect::<Vec<_>>()
                .into_iter()
        };
        // MALLOC_ARENA_MAX (often set for Ruby) is about arenas, not trimming.
        assert!(!tuned_by_operator(names(&[
            "PATH",
            "MALLOC_ARENA_MAX",
            "HOME"
        ])));
        assert!(tuned_by_operator(names(&["PATH", "MALLOC_TOP_PAD_"])));
        assert!(tuned_by_operator(names(&["MALLOC_TRIM_THRESHOLD_"])));
        assert!(tuned_by_operator(names(&["GLIBC_TUNABLES"])));
        // The arena count is the operator's when set either way.
        assert!(arenas_set_by_operator(names(&["PATH", "MALLOC_ARENA_MAX"])));
        assert!(arenas_set_by_operator(names(&["GLIBC_TUNABLES"])));
        assert!(!arenas_set_by_operator(names(&["PATH", "MALLOC_TOP_PAD_"])));
    }
}
