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

/// Largest block served from the arenas (larger ones are mmapped).
pub const MMAP_THRESHOLD_BYTES: i32 = 4 * 1024 * 1024;
/// Free bytes a heap's top may keep before glibc returns them.
pub const TRIM_THRESHOLD_BYTES: i32 = 8 * 1024 * 1024;

/// Applies the settings, unless the environment sets glibc's own
/// `MALLOC_*_` tunables (the operator's choice wins). Returns whether it
/// did. A no-op where the C library is not glibc.
pub fn keep_freed_memory() -> bool {
    if tuned_by_operator(std::env::vars_os().map(|(name, _)| name)) {
        return false;
    }
    apply()
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

#[cfg(test)]
mod tests {
    use super::tuned_by_operator;

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
    }
}
