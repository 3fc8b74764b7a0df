//! Routes from YAML files (standalone mode and `wsgate check`): a file or a directory of
//! `*.yaml`/`*.yml` files, each with one or more WebSocketRoute documents. A file that stops
//! parsing keeps the routes it last declared; its problem is reported with path and line.
//! Reads files; compiles nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::TypeMeta;

use crate::api::WebSocketRoute;
use crate::compile::key_of;
use crate::memo::digest;
use crate::route::RouteKey;
use crate::snapshot::SourceProblem;

const API_VERSION: &str = "wsgate.dev/v1alpha1";
const KIND: &str = "WebSocketRoute";

/// Why the route path itself cannot be read (as opposed to one file's content).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path does not exist or cannot be read.
    #[error(
        "cannot read routes from {path}: {source}; pass an existing file or directory to --routes"
    )]
    Unreadable {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A route and the file that declares it.
#[derive(Debug, Clone, Copy)]
pub struct FileRoute<'a> {
    /// The declaring file.
    pub path: &'a Path,
    /// The route as declared (with a creation timestamp filled in when it had none), shared
    /// until its file changes: a compile tells an unchanged route by its `Arc`.
    pub route: &'a Arc<WebSocketRoute>,
}

#[derive(Debug, Default)]
struct FileState {
    /// What the file declared the last time it parsed, with creation timestamps filled in.
    routes: Vec<Arc<WebSocketRoute>>,
    problem: Option<SourceProblem>,
    /// A digest of the text last read, so that an unchanged file is not parsed again.
    text: Option<u64>,
}

/// The routes declared under one path, as of the last [`FileSource::reload`].
#[derive(Debug)]
pub struct FileSource {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// When each route was first seen, standing in for `creationTimestamp` so that an
    /// older route keeps winning a conflict when a newer file claims the same host and path.
    first_seen: HashMap<RouteKey, Timestamp>,
}

impl FileSource {
    /// A source for `root` (a file or a directory); nothing is read until `reload`.
    pub fn new(root: impl Into<PathBuf>) -> FileSource {
        FileSource {
            root: root.into(),
            files: BTreeMap::new(),
            first_seen: HashMap::new(),
        }
    }

    /// The path this source reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Re-reads every file and parses those whose text changed. Files that fail to parse
    /// keep their last good routes; files that are gone drop theirs. Returns whether what
    /// the files declare (routes or problems) may have changed.
    pub fn reload(&mut self, now: Timestamp) -> Result<bool, SourceError> {
        let paths = list_files(&self.root)?;
        let known = self.files.len();
        self.files.retain(|p, _| paths.contains(p));
        let mut changed = self.files.len() != known;
        for path in paths {
            let state = self.files.entry(path.clone()).or_default();
            let text = std::fs::read_to_string(&path);
            let read = text.as_ref().ok().map(digest);
            if read.is_some() && read == state.text {
                continue;
            }
            state.text = read;
            let parsed = text
                .map_err(|e| SourceProblem {
                    source: path.display().to_string(),
                    line: None,
                    message: format!("cannot read file: {e}"),
                })
                .and_then(|text| parse_routes(&path, &text))
                .map(|routes| created(routes, &self.first_seen, now));
            // What a file declares counts as changed only if its routes or its problem
            // did: an edited comment, or a file that stays unreadable, is no news.
            let problem = match parsed {
                // Writers truncate a file before filling it: an empty read is far more
                // often a write in progress than a request to drop every route in it.
                Ok(routes) if routes.is_empty() && !state.routes.is_empty() => {
                    Some(SourceProblem {
                        source: path.display().to_string(),
                        line: None,
                        message: format!(
                            "file declares no routes now; the {} it declared before keep serving: delete the file to remove them",
                            state.routes.len()
                        ),
                    })
                }
                Ok(routes) => {
                    changed |= state.routes != routes;
                    state.routes = routes;
                    None
                }
                Err(problem) => Some(problem),
            };
            changed |= state.problem != problem;
            state.problem = problem;
        }
        if !changed {
            return Ok(false);
        }
        let present: HashSet<RouteKey> = self
            .files
            .values()
            .flat_map(|s| s.routes.iter().map(|r| key_of(r)))
            .collect();
        // A route deleted and declared again counts as new.
        self.first_seen.retain(|k, _| present.contains(k));
        for key in present {
            self.first_seen.entry(key).or_insert(now);
        }
        Ok(true)
    }

    /// Every route currently declared, in file order.
    pub fn routes(&self) -> Vec<FileRoute<'_>> {
        self.files
            .iter()
            .flat_map(|(path, state)| {
                state
                    .routes
                    .iter()
                    .map(move |route| FileRoute { path, route })
            })
            .collect()
    }

    /// The files that currently fail to parse.
    pub fn problems(&self) -> Vec<SourceProblem> {
        self.files
            .values()
            .filter_map(|s| s.problem.clone())
            .collect()
    }
}

/// Fills in the creation timestamp of parsed routes that have none: when the route was first
/// seen (`now` for one not seen before; `reload` records it).
fn created(
    routes: Vec<WebSocketRoute>,
    first_seen: &HashMap<RouteKey, Timestamp>,
    now: Timestamp,
) -> Vec<Arc<WebSocketRoute>> {
    routes
        .into_iter()
        .map(|mut route| {
            if route.metadata.creation_timestamp.is_none() {
                let first = first_seen.get(&key_of(&route)).copied();
                route.metadata.creation_timestamp = Some(Time(first.unwrap_or(now)));
            }
            Arc::new(route)
        })
        .collect()
}

/// The files under `root`: `root` itself if it is a file, else its `*.yaml` and `*.yml`
/// files (not hidden ones, not subdirectories), sorted.
fn list_files(root: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let unreadable = |source| SourceError::Unreadable {
        path: root.to_owned(),
        source,
    };
    let meta = std::fs::metadata(root).map_err(unreadable)?;
    if meta.is_file() {
        return Ok(vec![root.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if yaml && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Route files are the operator's own configuration, not untrusted input: the YAML parser's
/// guards against document and node floods are set for files of 100,000 routes (its
/// defaults stop at 1,024 documents).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 100_000,
            max_nodes: 10_000_000,
            max_events: 40_000_000,
        },
    }
}

/// Parses a multi-document YAML file of WebSocketRoutes.
pub fn parse_routes(path: &Path, text: &str) -> Result<Vec<WebSocketRoute>, SourceProblem> {
    let problem = |line, message| SourceProblem {
        source: path.display().to_string(),
        line,
        message,
    };
    let parse_error = |e: serde_saphyr::Error| {
        problem(
            e.location().map(|l| l.line()),
            e.without_snippet().to_string(),
        )
    };
    // The resource type ignores apiVersion and kind when deserializing, so read them first:
    // a document of another kind gets this message rather than a confusing field error.
    let types: Vec<TypeMeta> =
        serde_saphyr::from_multiple_with_options(text, yaml_options()).map_err(parse_error)?;
    for (i, t) in types.iter().enumerate() {
        if t.api_version != API_VERSION || t.kind != KIND {
            return Err(problem(
                None,
                format!(
                    "document {} is `apiVersion: {}` `kind: {}`; wsgate reads only `apiVersion: {API_VERSION}` `kind: {KIND}`",
                    i + 1,
                    t.api_version,
                    t.kind
                ),
            ));
        }
    }
    // Like `kubectl apply` (strict field validation), a field the resource does not have is
    // an error: a misspelt `path` or `allowMissing` must not silently fall back to a default.
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple_with_options(text, yaml_options()).map_err(parse_error)?;
    for document in &documents {
        let mut unknown = Vec::new();
        unknown_fields(document, &SCHEMA, "", &mut unknown);
        if let Some((field, known)) = unknown.into_iter().next() {
            let key = field.rsplit('.').next().unwrap_or(&field);
            let line = text
                .lines()
                .position(|l| l.contains(&format!("{key}:")))
                .map(|i| i as u64 + 1);
            return Err(problem(
                line,
                format!(
                    "unknown field `{field}`; the fields here are: {}",
                    known.join(", ")
                ),
            ));
        }
    }
    serde_saphyr::from_multiple_with_options(text, yaml_options()).map_err(parse_error)
}

/// The CRD's structural schema, walked to find fields a document has that it does not.
static SCHEMA: LazyLock<serde_json::Value> = LazyLock::new(|| {
    crate::api::crd()
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| serde_json::to_value(&s.open_api_v3_schema).ok())
        .unwrap_or_default()
});

/// Collects the dotted paths of fields in `value` that `schema` does not declare, with the
/// fields it does declare at that level. `apiVersion`, `kind` and `metadata` are the API
/// machinery's, not the schema's.
fn unknown_fields(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    path: &str,
    out: &mut Vec<(String, Vec<String>)>,
) {
    match value {
        serde_json::Value::Object(map) => {
            let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
                return;
            };
            for (key, child) in map {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match props.get(key) {
                    Some(child_schema) => unknown_fields(child, child_schema, &here, out),
                    None if path.is_empty()
                        && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    None => out.push((here, props.keys().cloned().collect())),
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item, item_schema, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
