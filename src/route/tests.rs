use super::*;

fn route(name: &str) -> Arc<Route> {
    Arc::new(Route::named("default", name, &[]))
}

/// Adds `name` as the route for paths under `prefix` on `host`.
fn insert(t: &mut RouteTable, host: &str, prefix: &str, name: &str) {
    t.insert(&[host.into()], &PathRule::prefix(prefix), route(name));
}

fn name_of(table: &RouteTable, host: &str, path: &str) -> Option<String> {
    table.lookup(host, path).map(|r| r.key.name.clone())
}

#[test]
fn prefix_is_segment_aware() {
    let rule = PathRule::prefix("/ws");
    assert!(rule.matches("/ws"));
    assert!(rule.matches("/ws/x"));
    assert!(!rule.matches("/wsx"));
    assert!(!rule.matches("/"));
    assert!(PathRule::prefix("/ws/").matches("/ws"));
    assert!(PathRule::prefix("/").matches("/anything"));
}

#[test]
fn exact_path_wins_over_prefix_and_longest_prefix_wins() {
    let mut t = RouteTable::default();
    let hosts: Vec<Arc<str>> = vec!["a.example.com".into()];
    t.insert(&hosts, &PathRule::prefix("/"), route("root"));
    t.insert(&hosts, &PathRule::prefix("/ws"), route("ws"));
    t.insert(&hosts, &PathRule::Exact("/ws/admin".into()), route("admin"));
    assert_eq!(
        name_of(&t, "a.example.com", "/ws/admin").as_deref(),
        Some("admin")
    );
    assert_eq!(name_of(&t, "a.example.com", "/ws/x").as_deref(), Some("ws"));
    assert_eq!(
        name_of(&t, "a.example.com", "/other").as_deref(),
        Some("root")
    );
}

#[test]
fn exact_host_wins_over_wildcard_and_wildcard_covers_several_labels() {
    let mut t = RouteTable::default();
    insert(&mut t, "*.example.com", "/", "wild");
    insert(&mut t, "a.example.com", "/", "exact");
    assert_eq!(name_of(&t, "a.example.com", "/").as_deref(), Some("exact"));
    assert_eq!(name_of(&t, "b.example.com", "/").as_deref(), Some("wild"));
    assert_eq!(name_of(&t, "x.b.example.com", "/").as_deref(), Some("wild"));
    assert_eq!(name_of(&t, "example.com", "/"), None);
    assert_eq!(name_of(&t, "evilexample.com", "/"), None);
}

#[test]
fn exact_host_without_matching_path_falls_back_to_wildcard() {
    let mut t = RouteTable::default();
    insert(&mut t, "*.example.com", "/", "wild");
    insert(&mut t, "a.example.com", "/ws", "exact");
    assert_eq!(
        name_of(&t, "a.example.com", "/chat").as_deref(),
        Some("wild")
    );
}

#[test]
fn longer_wildcard_suffix_wins() {
    let mut t = RouteTable::default();
    insert(&mut t, "*.example.com", "/", "outer");
    insert(&mut t, "*.eu.example.com", "/", "inner");
    assert_eq!(
        name_of(&t, "a.eu.example.com", "/").as_deref(),
        Some("inner")
    );
    assert_eq!(name_of(&t, "eu.example.com", "/").as_deref(), Some("outer"));
}

#[test]
fn a_route_refusing_http2_sockets_turns_them_off_for_its_hostname_and_the_names_under_its_wildcard()
{
    let mut t = RouteTable::default();
    insert(&mut t, "chat.example.com", "/", "chat");
    let refusing = Arc::new(Route {
        http2_sockets: false,
        ..Route::named("default", "legacy", &[])
    });
    t.insert(
        &["*.legacy.example.com".into()],
        &PathRule::prefix("/old"),
        refusing.clone(),
    );
    t.insert(&["h1.example.com".into()], &PathRule::prefix("/"), refusing);
    assert!(t.http2_sockets("chat.example.com"));
    assert!(!t.http2_sockets("h1.example.com"));
    assert!(!t.http2_sockets("a.b.legacy.example.com"));
    assert!(
        t.http2_sockets("legacy.example.com"),
        "a wildcard covers one label or more"
    );
    assert!(t.http2_sockets("unknown.example.com"));
}

#[test]
fn serving_names_the_route_with_the_same_path_rule_among_prefixes_of_equal_length() {
    let mut t = RouteTable::default();
    let hosts: Vec<Arc<str>> = vec!["a.example.com".into()];
    // Inserted in no particular order of length; two of them the same length.
    t.insert(&hosts, &PathRule::prefix("/ab"), route("ab"));
    t.insert(&hosts, &PathRule::prefix("/longer"), route("longer"));
    t.insert(&hosts, &PathRule::prefix("/cd"), route("cd"));
    t.insert(&hosts, &PathRule::prefix("/"), route("root"));
    let serving = |path: &PathRule| t.serving("a.example.com", path).map(|r| r.key.name.clone());
    assert_eq!(serving(&PathRule::prefix("/ab")).as_deref(), Some("ab"));
    assert_eq!(serving(&PathRule::prefix("/cd")).as_deref(), Some("cd"));
    assert_eq!(
        serving(&PathRule::prefix("/longer")).as_deref(),
        Some("longer")
    );
    assert_eq!(serving(&PathRule::prefix("/")).as_deref(), Some("root"));
    assert_eq!(serving(&PathRule::prefix("/ef")), None);
    assert_eq!(serving(&PathRule::Exact("/ab".into())), None);
    assert!(
        t.serving("b.example.com", &PathRule::prefix("/ab"))
            .is_none()
    );
    // The longest prefix still wins a request, whatever the order of insertion.
    assert_eq!(
        name_of(&t, "a.example.com", "/longer/x").as_deref(),
        Some("longer")
    );
    assert_eq!(name_of(&t, "a.example.com", "/cd/x").as_deref(), Some("cd"));
    assert_eq!(name_of(&t, "a.example.com", "/zz").as_deref(), Some("root"));
}
