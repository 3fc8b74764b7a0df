use super::*;

const ROUTE: &str = "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: NAME}\nspec:\n  hostnames: [a.example.com]\n  upstream: {url: \"ws://127.0.0.1:9\"}\n";

fn route(name: &str) -> String {
    ROUTE.replace("NAME", name)
}

fn names(source: &FileSource) -> Vec<String> {
    source
        .routes()
        .iter()
        .map(|r| r.route.metadata.name.clone().unwrap_or_default())
        .collect()
}

#[test]
fn multi_document_files_yield_every_route() {
    let text = format!("{}---\n{}", route("a"), route("b"));
    let routes = parse_routes(Path::new("x.yaml"), &text).expect("parses");
    assert_eq!(routes.len(), 2);
}

#[test]
fn a_file_of_more_routes_than_the_yaml_parsers_default_document_cap_parses() {
    let text: Vec<String> = (0..2_000).map(|i| route(&format!("r{i}"))).collect();
    let routes = parse_routes(Path::new("x.yaml"), &text.join("---\n")).expect("parses");
    assert_eq!(routes.len(), 2_000);
}

#[test]
fn parse_error_names_the_line() {
    let text = format!(
        "{}---\napiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: b}}\nspec:\n  hostnames: [\n",
        route("a")
    );
    let problem = parse_routes(Path::new("x.yaml"), &text).expect_err("fails");
    assert_eq!(problem.source, "x.yaml");
    assert!(problem.line.is_some(), "{problem:?}");
}

#[test]
fn misspelt_fields_are_refused_with_the_line_and_the_known_fields() {
    let text = route("a").replace("  upstream:", "  pth: {value: /ws}\n  upstream:");
    let problem = parse_routes(Path::new("x.yaml"), &text).expect_err("fails");
    assert_eq!(problem.line, Some(6), "{problem:?}");
    assert!(
        problem.message.contains("unknown field `spec.pth`"),
        "{}",
        problem.message
    );
    assert!(problem.message.contains("path"), "{}", problem.message);
    let nested = route("a").replace(
        "  upstream:",
        "  origins: {allowMisisng: true}\n  upstream:",
    );
    let problem = parse_routes(Path::new("x.yaml"), &nested).expect_err("fails");
    assert!(
        problem.message.contains("`spec.origins.allowMisisng`"),
        "{}",
        problem.message
    );
}

#[test]
fn other_kinds_are_refused_with_a_hint() {
    let text = route("a").replace("kind: WebSocketRoute", "kind: Service");
    let problem = parse_routes(Path::new("x.yaml"), &text).expect_err("fails");
    assert!(
        problem.message.contains("reads only"),
        "{}",
        problem.message
    );
}

#[test]
fn directory_reads_yaml_files_only_and_a_broken_file_keeps_its_last_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), route("a")).expect("write");
    std::fs::write(dir.path().join("b.yml"), route("b")).expect("write");
    std::fs::write(dir.path().join(".hidden.yaml"), route("h")).expect("write");
    std::fs::write(dir.path().join("notes.txt"), route("t")).expect("write");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/c.yaml"), route("c")).expect("write");

    let mut source = FileSource::new(dir.path());
    source.reload(Timestamp::now()).expect("reload");
    assert_eq!(names(&source), ["a", "b"]);
    assert!(source.problems().is_empty());

    std::fs::write(dir.path().join("a.yaml"), "spec: [").expect("write");
    source.reload(Timestamp::now()).expect("reload");
    assert_eq!(names(&source), ["a", "b"], "last good routes keep serving");
    assert_eq!(source.problems().len(), 1);

    std::fs::write(dir.path().join("a.yaml"), "").expect("truncate");
    source.reload(Timestamp::now()).expect("reload");
    assert_eq!(
        names(&source),
        ["a", "b"],
        "an emptied file keeps its routes"
    );
    assert!(source.problems()[0].message.contains("delete the file"));

    std::fs::remove_file(dir.path().join("a.yaml")).expect("rm");
    source.reload(Timestamp::now()).expect("reload");
    assert_eq!(names(&source), ["b"]);
    assert!(source.problems().is_empty());
}

#[test]
fn a_reload_says_whether_what_the_files_declare_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.yaml");
    std::fs::write(&a, route("a")).expect("write");
    let mut source = FileSource::new(dir.path());
    let mut reload = || source.reload(Timestamp::now()).expect("reload");
    assert!(reload(), "the first read");
    assert!(!reload(), "nothing written");
    std::fs::write(&a, format!("# a comment\n{}", route("a"))).expect("write");
    assert!(!reload(), "a comment changes no route");
    std::fs::write(&a, route("a2")).expect("write");
    assert!(reload(), "a route renamed");
    std::fs::write(&a, "spec: [").expect("write");
    assert!(reload(), "a problem appeared");
    std::fs::write(&a, "spec: [ ").expect("write");
    assert!(!reload(), "the same problem again");
    std::fs::write(dir.path().join("b.yaml"), route("b")).expect("write");
    assert!(reload(), "a file added");
    std::fs::remove_file(dir.path().join("b.yaml")).expect("rm");
    assert!(reload(), "a file removed");
}

#[test]
fn first_seen_time_stands_in_for_creation_timestamp() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), route("a")).expect("write");
    let mut source = FileSource::new(dir.path());
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("ts");
    source.reload(t0).expect("reload");
    let t1: Timestamp = "2026-01-02T00:00:00Z".parse().expect("ts");
    source.reload(t1).expect("reload");
    let created = source.routes()[0].route.metadata.creation_timestamp.clone();
    assert_eq!(created.map(|t| t.0), Some(t0));
}

#[test]
fn missing_path_is_an_error_with_a_hint() {
    let mut source = FileSource::new("/nonexistent/wsgate-routes");
    let err = source.reload(Timestamp::now()).expect_err("fails");
    assert!(err.to_string().contains("--routes"), "{err}");
}
