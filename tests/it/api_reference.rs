//! The HTTP API reference in README.md (section "HTTP API") against the routes each role
//! registers: every route is documented, and every documented route exists, with its method.
//! The routes are read from the one function of each role that registers them (its
//! `configure`, and the routes every role shares), so a route added, moved or removed without
//! its line in the reference fails here.

use std::collections::BTreeSet;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// (role, where its routes are registered: file and function)
const ROLES: &[(&str, &str, &str)] = &[
    (
        "controller",
        "src/controller/routes.rs",
        "pub fn configure(",
    ),
    ("proxy", "src/proxy/routes/mod.rs", "pub fn configure("),
    ("peer", "src/peer/routes/mod.rs", "pub fn configure("),
    ("relay", "src/relay/routes.rs", "pub fn configure("),
];
/// Routes every role has.
const SHARED: (&str, &str) = ("src/web/mod.rs", "pub fn common_routes(");

/// The body of the function starting with `head` in `file`: up to its closing brace at the
/// start of a line.
fn function(file: &str, head: &str) -> String {
    let text = std::fs::read_to_string(format!("{ROOT}/{file}")).expect("the source");
    let start = text
        .find(head)
        .unwrap_or_else(|| panic!("{head} not in {file}"));
    let end = text[start..].find("\n}\n").expect("its end") + start;
    text[start..end].to_string()
}

/// (METHOD, path) of every route registered in `body`: `.route("P", web::get()…)`, and a
/// resource (`resource("P")`, `own("P")`, `from_proxy("P")`) with its `.route(web::post()…)`
/// calls, under the prefix of any `web::scope("P")` it sits in.
fn routes_in(body: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut scopes: Vec<(String, i32)> = Vec::new();
    let mut resource: Option<String> = None;
    let mut depth = 0i32;
    let bytes = body.as_bytes();
    let mut i = 0;
    let literal = |at: usize| -> Option<(String, usize)> {
        let rest = &body[at..];
        let skipped = rest.len() - rest.trim_start().len();
        let rest = rest.trim_start().strip_prefix('"')?;
        let end = rest.find('"')?;
        Some((rest[..end].to_string(), at + skipped + 1 + end + 1))
    };
    let method_at = |at: usize| -> Option<String> {
        let rest = &body[at..];
        let rest = rest.trim_start();
        let rest = rest.strip_prefix("web::")?;
        let end = rest.find('(')?;
        let m = &rest[..end];
        matches!(m, "get" | "post" | "put" | "delete" | "patch").then(|| m.to_uppercase())
    };
    let prefix =
        |scopes: &Vec<(String, i32)>| scopes.iter().map(|(p, _)| p.as_str()).collect::<String>();
    while i < bytes.len() {
        let rest = &body[i..];
        let opener = [
            "web::scope(",
            "web::resource(",
            "resource(",
            "own(",
            "from_proxy(",
        ]
        .iter()
        .find(|o| {
            rest.starts_with(*o)
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        });
        if let Some(o) = opener {
            let at = i + o.len();
            if let Some((path, _)) = literal(at) {
                if *o == "web::scope(" {
                    // What is in the scope is in the call around it (`.service(web::scope(…)…)`):
                    // the scope ends when that call's parenthesis closes.
                    scopes.push((path, depth));
                } else {
                    resource = Some(format!("{}{path}", prefix(&scopes)));
                }
            }
        } else if rest.starts_with(".route(") {
            let at = i + ".route(".len();
            if let Some((path, after)) = literal(at) {
                let method = method_at(after + 1).expect("a method after the path");
                out.insert((method, format!("{}{path}", prefix(&scopes))));
            } else if let Some(method) = method_at(at) {
                let path = resource.clone().expect("a resource before .route(web::…)");
                out.insert((method, path));
            }
        }
        match bytes[i] {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                while scopes.last().is_some_and(|(_, d)| depth < *d) {
                    scopes.pop();
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The reference's rows for `role`: `| METHOD | /path | …` under `### role`.
fn documented(role: &str) -> BTreeSet<(String, String)> {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).expect("README.md");
    let api = readme
        .split("\n## HTTP API\n")
        .nth(1)
        .expect("README.md has a section `## HTTP API`");
    let api = api.split("\n## ").next().unwrap_or(api);
    let section = api
        .split(&format!("\n### {role}"))
        .nth(1)
        .unwrap_or_else(|| panic!("the HTTP API section has no `### {role}`"));
    let section = section.split("\n### ").next().unwrap_or(section);
    let mut out = BTreeSet::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        let (methods, path) = (cells[1], cells[2].trim_matches('`'));
        if !path.starts_with('/') {
            continue;
        }
        for m in methods.split(',').map(str::trim) {
            if matches!(m, "GET" | "POST" | "PUT" | "DELETE" | "PATCH") {
                out.insert((m.to_string(), path.to_string()));
            }
        }
    }
    out
}

#[test]
fn every_route_of_every_role_is_in_the_readmes_api_reference_and_nothing_else_is() {
    let shared = routes_in(&function(SHARED.0, SHARED.1));
    assert!(
        shared.contains(&("GET".into(), "/healthz".into())),
        "{shared:?}"
    );
    for (role, file, head) in ROLES {
        let mut registered = routes_in(&function(file, head));
        registered.extend(shared.iter().cloned());
        let documented = documented(role);
        let missing: Vec<_> = registered.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&registered).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "{role}: registered in {file} but not in README's HTTP API: {missing:?}; in the \
             README but not registered: {stale:?}"
        );
    }
}

#[test]
fn the_route_reader_sees_scopes_resources_and_methods() {
    let body = r#"cfg.route("/", web::get().to(page))
        .service(own("/a").route(web::post().to(x)).route(web::get().to(y)))
        .route(
            "/spread/{x}",
            web::get().to(spread),
        )
        .service(
            web::scope("/api/v1")
                .service(from_proxy("/inbox").route(web::post().to(inbox)))
                .route("/me", web::get().to(me)),
        )
        .route("/after", web::post().to(z));"#;
    let got: Vec<(String, String)> = routes_in(body).into_iter().collect();
    let want: Vec<(String, String)> = [
        ("GET", "/"),
        ("GET", "/a"),
        ("GET", "/api/v1/me"),
        ("GET", "/spread/{x}"),
        ("POST", "/a"),
        ("POST", "/after"),
        ("POST", "/api/v1/inbox"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want);
}

/// Prints what the roles register (to write the reference): `cargo test --test it
/// api_reference::print -- --ignored --nocapture`.
#[test]
#[ignore]
fn print() {
    let shared = routes_in(&function(SHARED.0, SHARED.1));
    for (role, file, head) in ROLES {
        let mut registered = routes_in(&function(file, head));
        registered.extend(shared.iter().cloned());
        println!("### {role}");
        for (m, p) in registered {
            println!("| {m} | `{p}` |");
        }
    }
}
