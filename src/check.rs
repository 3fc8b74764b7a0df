//! `wsgate check`: validate route files offline with the same compile step the gateway uses,
//! and print each route's conditions as `kubectl get -o yaml` would show its status.

use std::io::{self, Write};
use std::path::PathBuf;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::Serialize;

use crate::compile::{Compiler, reason};
use crate::source::file::{FileSource, SourceError};
use crate::source::local::backends;

/// The outcome of a check, mapped to the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every route is Accepted and every file parses (exit 0).
    AllAccepted,
    /// Some route is not Accepted or some file does not parse (exit 1).
    Problems,
}

/// Why a check could not run (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A path cannot be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Writing the report failed.
    #[error("cannot write the report: {0}")]
    Output(#[from] io::Error),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    status: Status,
}

#[derive(Serialize)]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(skip_serializing_if = "Option::is_none")]
    observed_generation: Option<i64>,
    conditions: Vec<Condition>,
}

/// Checks every route under `paths`: the report goes to `out`, parse errors and warnings
/// to `diag`.
pub fn run(
    paths: &[PathBuf],
    out: &mut dyn Write,
    diag: &mut dyn Write,
) -> Result<Outcome, CheckError> {
    let now = Timestamp::now();
    let mut sources = Vec::new();
    for path in paths {
        let mut source = FileSource::new(path.clone());
        source.reload(now)?;
        sources.push(source);
    }
    let declared: Vec<_> = sources.iter().flat_map(FileSource::routes).collect();
    let problems: Vec<_> = sources.iter().flat_map(FileSource::problems).collect();
    let routes: Vec<_> = declared.iter().map(|d| d.route.clone()).collect();
    let compiled = Compiler::default().compile(&routes, &backends(&[]));

    let mut outcome = if problems.is_empty() {
        Outcome::AllAccepted
    } else {
        Outcome::Problems
    };
    for p in &problems {
        match p.line {
            Some(line) => writeln!(diag, "error: {}:{line}: {}", p.source, p.message)?,
            None => writeln!(diag, "error: {}: {}", p.source, p.message)?,
        }
    }
    for (d, verdict) in declared.iter().zip(&compiled.verdicts) {
        if !verdict.accepted() {
            outcome = Outcome::Problems;
        }
        for w in &verdict.warnings {
            writeln!(diag, "warning: {} ({}): {w}", verdict.key, d.path.display())?;
        }
        let report = Report {
            api_version: "wsgate.dev/v1alpha1",
            kind: "WebSocketRoute",
            metadata: Metadata {
                name: &verdict.key.name,
                namespace: &verdict.key.namespace,
            },
            status: Status {
                observed_generation: verdict.generation,
                conditions: crate::status::conditions(verdict, &[], now),
            },
        };
        let yaml = serde_saphyr::to_string(&report).map_err(|e| io::Error::other(e.to_string()))?;
        writeln!(out, "---\n# {}\n{}", d.path.display(), yaml.trim_end())?;
    }
    let not_accepted = compiled.verdicts.iter().filter(|v| !v.accepted()).count();
    let conflicted = compiled
        .verdicts
        .iter()
        .filter(|v| {
            v.condition(crate::compile::condition::ACCEPTED)
                .is_some_and(|c| c.reason == reason::CONFLICTED)
        })
        .count();
    writeln!(
        diag,
        "{} routes checked: {} accepted, {} not accepted ({} conflicted), {} files with errors",
        compiled.verdicts.len(),
        compiled.verdicts.len() - not_accepted,
        not_accepted,
        conflicted,
        problems.len()
    )?;
    Ok(outcome)
}
