//! No import circles inside any crate of the workspace.
//!
//! Each source file is a module (`a/mod.rs` and `a.rs` are `a`, `a/b.rs` is `a::b`). A module
//! depends on every module whose path it names (`crate::…`, `super::…`, `self::…`, or a child
//! module by its name). A module naming its own ancestors is nesting, not a dependency: a child
//! may use what its parent defines. Test modules (`tests.rs`, `#[cfg(test)] mod tests`) are
//! left out. Any other circle fails the test with the path it takes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, in path order.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            out.push(path);
        }
    }
}

/// The module path of `file` relative to the crate's `src`, or `None` for crate roots of
/// binaries and for test modules.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let relative = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
    if parts.first().is_some_and(|first| first == "bin") || relative == Path::new("main.rs") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if stem == "tests" {
        return None;
    }
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    Some(parts)
}

/// The file's code: without its inline test module (by convention at the end of the file)
/// and without comments (a doc link is not a dependency).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Every path the text names, as identifier lists: `crate::a::b::Item` gives
/// `["crate", "a", "b", "Item"]`. A braced group continues the path with each of its members'
/// first identifiers (`use crate::a::{b::C, d}` gives `crate::a::b` and `crate::a::d`).
fn paths(text: &str) -> Vec<Vec<String>> {
    let bytes = text.as_bytes();
    let is_ident = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if !is_ident(bytes[at]) || (at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b':')) {
            at += 1;
            continue;
        }
        let mut path = Vec::new();
        let mut cursor = at;
        loop {
            let start = cursor;
            while cursor < bytes.len() && is_ident(bytes[cursor]) {
                cursor += 1;
            }
            path.push(text[start..cursor].to_owned());
            if text[cursor..].starts_with("::{") {
                // A group: each member continues this path.
                let close = text[cursor..].find('}').map_or(text.len(), |offset| cursor + offset);
                for member in text[cursor + 3..close].split(',') {
                    let first: String =
                        member.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !first.is_empty() {
                        let mut grouped = path.clone();
                        grouped.push(first);
                        found.push(grouped);
                    }
                }
                cursor = close;
                break;
            }
            if text[cursor..].starts_with("::") && cursor + 2 < bytes.len() && is_ident(bytes[cursor + 2]) {
                cursor += 2;
                continue;
            }
            break;
        }
        if path.len() > 1 {
            found.push(path);
        }
        at = cursor.max(at + 1);
    }
    found
}

/// The longest known module that `path` (already absolute) falls in.
fn resolve(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Option<Vec<String>> {
    (0..=path.len()).rev().map(|length| path[..length].to_vec()).find(|prefix| modules.contains(prefix))
}

/// The circles among one crate's modules, each as the list of modules it passes through.
fn circles(src: &Path) -> Vec<Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let texts: BTreeMap<Vec<String>, String> =
        files.iter().filter_map(|file| Some((module_of(src, file)?, std::fs::read_to_string(file).unwrap()))).collect();
    let modules: BTreeSet<Vec<String>> = texts.keys().cloned().collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &texts {
        for path in paths(&code(text)) {
            let absolute: Vec<String> = match path[0].as_str() {
                "crate" => path[1..].to_vec(),
                "self" => module.iter().cloned().chain(path[1..].iter().cloned()).collect(),
                "super" => {
                    let mut base = module.clone();
                    let mut rest = &path[..];
                    while rest.first().is_some_and(|part| part == "super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                    base.into_iter().chain(rest.iter().cloned()).collect()
                }
                child => {
                    let mut candidate = module.clone();
                    candidate.push(child.to_owned());
                    if !modules.contains(&candidate) {
                        continue;
                    }
                    module.iter().cloned().chain(path.iter().cloned()).collect()
                }
            };
            let Some(target) = resolve(&modules, &absolute) else { continue };
            if target != *module && !module.starts_with(&target) {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    // Depth-first search for back edges.
    let mut found = Vec::new();
    let mut state: BTreeMap<Vec<String>, u8> = BTreeMap::new();
    fn visit(
        module: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        found: &mut Vec<Vec<String>>,
    ) {
        state.insert(module.clone(), 1);
        stack.push(module.clone());
        for next in edges.get(module).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                0 => visit(next, edges, state, stack, found),
                1 => {
                    let from = stack.iter().position(|entry| entry == next).unwrap();
                    let mut circle: Vec<String> = stack[from..].iter().map(|entry| entry.join("::")).collect();
                    circle.push(next.join("::"));
                    found.push(circle);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(module.clone(), 2);
    }
    for module in &modules {
        if state.get(module).copied().unwrap_or(0) == 0 {
            visit(module, &edges, &mut state, &mut Vec::new(), &mut found);
        }
    }
    found
}

#[test]
fn the_checker_finds_a_planted_circle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "mod inner;\nuse crate::b::B;\n").unwrap();
    std::fs::write(src.join("a/inner.rs"), "use super::super::b;\n").unwrap();
    std::fs::write(src.join("b.rs"), "pub struct B;\nfn f() { let _ = crate::a::inner::g; }\n").unwrap();
    let found = circles(src);
    assert!(!found.is_empty(), "a → b → a::inner is a circle once inner is reached from b");
    // Nesting alone (a child using its parent) is not a circle.
    std::fs::write(src.join("b.rs"), "pub struct B;\n").unwrap();
    std::fs::write(src.join("a/inner.rs"), "use super::X;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "mod inner;\npub struct X;\nuse inner::Y;\nuse crate::b::B;\n").unwrap();
    assert_eq!(circles(src), Vec::<Vec<String>>::new());
}

#[test]
fn no_crate_has_an_import_circle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut report = Vec::new();
    let mut crates = 0;
    for entry in std::fs::read_dir(workspace).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.join("lib.rs").exists() && !src.join("main.rs").exists() {
            continue;
        }
        crates += 1;
        for circle in circles(&src) {
            report.push(format!("{}: {}", src.display(), circle.join(" → ")));
        }
    }
    assert!(crates >= 5, "found only {crates} crates under {}", workspace.display());
    assert!(report.is_empty(), "import circles:\n{}", report.join("\n"));
}
