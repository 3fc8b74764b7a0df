//! Live heap bytes of this process, counted by `stats_alloc` around the system allocator, so
//! the snapshot scenario can say what a route costs in memory without the allocator's slack.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed, as the program asked for them.
pub(crate) fn live_bytes() -> usize {
    let stats = GLOBAL.stats();
    (stats.bytes_allocated + stats.bytes_reallocated.max(0) as usize)
        .saturating_sub(stats.bytes_deallocated + (-stats.bytes_reallocated).max(0) as usize)
}
