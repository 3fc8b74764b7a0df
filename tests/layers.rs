//! The direction of the imports, enforced (docs/design.md §1): a module may use its own layer
//! and the ones below, never one above. Read from the source text: every `crate::NAME` a
//! file's code mentions, outside comments and its test modules.

use std::collections::BTreeSet;
use std::path::Path;

/// Layers, lowest first; a module is placed by its first path segment, except where a
/// longer path is listed (the controller's parts sit below its wiring).
const LAYERS: [&[&str]; 7] = [
    // Shared by every layer: nothing domain-specific.
    &["metrics", "apierror", "logging", "memo"],
    &["api", "policy", "request"],
    &["route", "compile", "status", "auth", "tls"],
    &["snapshot"],
    &[
        "source",
        "controller::report",
        "controller::leader",
        "check",
        "scale_to_zero",
    ],
    &["proxy", "admin", "accept", "access", "probe"],
    // Wiring: flags, listeners and the two modes.
    &["config", "server", "controller", "standalone"],
];

fn layer_of(module: &str) -> usize {
    let mut best: Option<(usize, usize)> = None;
    for (layer, names) in LAYERS.iter().enumerate() {
        for name in names.iter() {
            let matches = module == *name || module.starts_with(&format!("{name}::"));
            if matches && best.is_none_or(|(len, _)| name.len() > len) {
                best = Some((name.len(), layer));
            }
        }
    }
    best.map(|(_, layer)| layer)
        .unwrap_or_else(|| panic!("module {module} is in no layer: add it to LAYERS"))
}

/// The module a source file defines, like `controller::report`.
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The text of `source` before its `#[cfg(test)]` module, if it has one at the end.
fn production(source: &str) -> &str {
    source
        .find("#[cfg(test)]\nmod tests")
        .map_or(source, |at| &source[..at])
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The first segment of a module path.
fn top(module: &str) -> String {
    module.split("::").next().unwrap_or(module).to_owned()
}

/// An identifier at the start of `text`.
fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Every module `code` names after `crate::`, also inside `crate::{a, b::c}`; the
/// controller's parts by their longer path (`controller::report`), since they sit below its
/// wiring.
fn imports(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let paths: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => {
                let mut depth = 0;
                let end = group
                    .char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => return true,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        false
                    })
                    .map_or(group.len(), |(i, _)| i);
                let mut items = Vec::new();
                let (mut depth, mut start) = (0, 0);
                for (i, c) in group[..end].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            items.push(group[start..i].trim());
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                items.push(group[start..end].trim());
                items
            }
            None => vec![rest],
        };
        for path in paths {
            let name = ident(path);
            if name.is_empty() {
                continue;
            }
            let target = match path.strip_prefix(&format!("{name}::")) {
                Some(more) if name == "controller" && !ident(more).is_empty() => {
                    format!("{name}::{}", ident(more))
                }
                _ => name,
            };
            found.push(target);
        }
    }
    found
}

#[test]
fn module_paths_are_read_also_from_grouped_imports() {
    let code =
        "use crate::{api::X, proxy::{a, b}, controller::report::Y};\nlet _ = crate::snapshot::Z;";
    assert_eq!(
        imports(code),
        ["api", "proxy", "controller::report", "snapshot"]
    );
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut upward = BTreeSet::new();
    let mut arrows = BTreeSet::new();
    for path in all {
        let module = module_of(&path, &src);
        if module == "lib" || module == "main" || module.ends_with("tests") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let from = layer_of(&module);
        // Code only: comments may name any module.
        let code: String = production(&text)
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for target in imports(&code) {
            if module.split("::").next() == target.split("::").next() {
                continue;
            }
            arrows.insert((top(&module), top(&target)));
            if layer_of(&target) > from {
                upward.insert((module.clone(), target));
            }
        }
    }
    // The map between top-level modules, for a reader (`cargo test --test layers -- --nocapture`).
    for (from, to) in &arrows {
        eprintln!("{from} -> {to}");
    }
    assert!(
        upward.is_empty(),
        "imports from a lower layer to a higher one: {upward:?}"
    );
}
