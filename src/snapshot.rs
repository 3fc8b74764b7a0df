//! The snapshot the data plane reads: one compiled route table with the verdicts and source
//! problems it was built from. Immutable; a new one replaces the old one whole.

use serde::Serialize;

use crate::compile::{Compiled, Verdict};
use crate::route::RouteTable;

/// A problem with where routes come from, e.g. a file that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceProblem {
    /// Which source: a file path in standalone mode.
    pub source: String,
    /// The line the problem is on, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The parser's message.
    pub message: String,
}

/// An immutable route table plus what it was compiled from.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increments with every snapshot a gateway applies.
    pub version: u64,
    /// The routes handshakes are matched against.
    pub table: RouteTable,
    /// One verdict per declared route.
    pub verdicts: Vec<Verdict>,
    /// Sources that failed to load; what they last declared is still in `table`.
    pub problems: Vec<SourceProblem>,
}

impl Snapshot {
    /// Builds a snapshot from a compile result.
    pub fn new(version: u64, compiled: Compiled, problems: Vec<SourceProblem>) -> Snapshot {
        Snapshot {
            version,
            table: compiled.table,
            verdicts: compiled.verdicts,
            problems,
        }
    }
}
