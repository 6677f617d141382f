//! The binary's memory allocator: jemalloc, set to hand freed pages back to the OS within 10 ms.
//!
//! Not part of the library (the library never chooses an allocator): `src/main.rs` declares this
//! module, and the throughput benchmark includes the same file, so that its figures are the
//! binary's.
//!
//! Why jemalloc, and why these options (README, Benchmarks, stop 20): at 200,000 answers the
//! backfill's live heap peaks at about 90 MB, and what the allocator keeps on top of it decides
//! the resident size. With the same code, `fetch --once` peaked at 168-177 MB with mimalloc
//! (purge delay 10 ms; 166-173 MB at 0 in stop 19), 182-189 MB with glibc's malloc (stop 19; 147
//! MB with its arenas, mmap and trim thresholds all tuned, but at 54-58 s instead of about 30), 174 MB with
//! jemalloc's defaults, and 136-144 MB with jemalloc as set here (with the near-duplicate index in
//! tiers), for about 6% more CPU than mimalloc.

use std::ffi::{c_char, CStr};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, compiled in. `_RJEM_MALLOC_CONF` in the environment is read after them,
/// so an operator can still change any of them.
/// - `narenas:2`: one arena per core. jemalloc's default is four per core; answerfeed runs two
///   busy threads (fetch or ingest, and the derive thread) beside the diff thread.
/// - `dirty_decay_ms:10`, `muzzy_decay_ms:0`: freed pages go back to the OS after 10 ms rather
///   than ten seconds. A backfill frees and reallocates far faster than that, and kept pages
///   were much of the difference between a 90 MB heap and a 174 MB resident size. Handing them
///   back at once (0) saved 5-10 MB more but doubled the system time (a backfill's 6-7 s of it
///   to 11-13 s, and the whole benchmark's 27 s to 55 s); at 10 ms it stays at 6.6-7.9 s.
pub const OPTIONS: &CStr = c"narenas:2,dirty_decay_ms:10,muzzy_decay_ms:0";

/// What jemalloc reads for its compiled-in options: a `const char *` named `malloc_conf` (with the
/// `_rjem_` prefix tikv-jemalloc-sys builds it with). jemalloc declares its own weak and null, so
/// this definition is the one linked. It is read before `main` runs, hence a static.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: Option<&'static c_char> = Some(
    // SAFETY: a pointer to the first byte of a 'static, NUL-terminated string.
    unsafe { &*OPTIONS.as_ptr() },
);

/// Hands back to the OS what this thread's cache and the arenas hold free. The daemon calls it
/// after closing the log between cycles: the pages freed in closing would otherwise wait for the
/// next allocations to run jemalloc's decay, and the thread's small-object cache would stay.
pub fn return_freed_memory() {
    for name in [c"thread.tcache.flush", c"arena.4096.purge"] {
        // SAFETY: both are void mallctls (no value read or written); 4096 is
        // MALLCTL_ARENAS_ALL. An error (tcache off, say) leaves nothing to hand back.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
        }
    }
}
