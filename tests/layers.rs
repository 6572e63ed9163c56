//! The workspace's import structure, read from the source text: no file imports a file that
//! imports it back, directly or around a longer circle (test modules aside). `KNOWN` lists the
//! edges of today's circles, which the architecture work removes: an edge that no longer closes a
//! circle must leave the list, and no new circle may appear.
//!
//! An import is any `crate::…` or `super::…` path (in `use` trees too), resolved to the file of the
//! longest module prefix it names, through `pub use` re-exports to the file that defines the item.
//! `mod` declarations are ownership, not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates' source roots.
const CRATES: [&str; 2] = ["crates/graph/src", "crates/pipeline/src"];

/// The edges of today's circles, "importer -> imported" (issue 34 removes them).
const KNOWN: &[&str] = &[
    "crates/graph/src/ops/avx512.rs -> crates/graph/src/ops/cpu_kernels.rs",
    "crates/graph/src/ops/avx512.rs -> crates/graph/src/ops/mod.rs",
    "crates/graph/src/ops/cpu_kernels.rs -> crates/graph/src/ops/avx512.rs",
    "crates/graph/src/ops/cpu_kernels.rs -> crates/graph/src/ops/depthwise_channels.rs",
    "crates/graph/src/ops/cpu_kernels.rs -> crates/graph/src/ops/winograd.rs",
    "crates/graph/src/ops/cpu_kernels.rs -> crates/graph/src/tensor.rs",
    "crates/graph/src/ops/depthwise_channels.rs -> crates/graph/src/ops/avx512.rs",
    "crates/graph/src/ops/depthwise_channels.rs -> crates/graph/src/ops/cpu_kernels.rs",
    "crates/graph/src/ops/depthwise_channels.rs -> crates/graph/src/ops/mod.rs",
    "crates/graph/src/ops/elementwise.rs -> crates/graph/src/ops/cpu_kernels.rs",
    "crates/graph/src/ops/elementwise.rs -> crates/graph/src/ops/mod.rs",
    "crates/graph/src/ops/elementwise.rs -> crates/graph/src/tensor.rs",
    "crates/graph/src/ops/lstm.rs -> crates/graph/src/ops/cpu_kernels.rs",
    "crates/graph/src/ops/lstm.rs -> crates/graph/src/ops/mod.rs",
    "crates/graph/src/ops/lstm.rs -> crates/graph/src/tensor.rs",
    "crates/graph/src/ops/mod.rs -> crates/graph/src/ops/cpu_kernels.rs",
    "crates/graph/src/ops/mod.rs -> crates/graph/src/ops/elementwise.rs",
    "crates/graph/src/ops/mod.rs -> crates/graph/src/ops/lstm.rs",
    "crates/graph/src/ops/mod.rs -> crates/graph/src/ops/nn.rs",
    "crates/graph/src/ops/mod.rs -> crates/graph/src/ops/reduce.rs",
    "crates/graph/src/ops/mod.rs -> crates/graph/src/ops/shape.rs",
    "crates/graph/src/ops/mod.rs -> crates/graph/src/tensor.rs",
    "crates/graph/src/ops/nn.rs -> crates/graph/src/ops/cpu_kernels.rs",
    "crates/graph/src/ops/nn.rs -> crates/graph/src/ops/mod.rs",
    "crates/graph/src/ops/nn.rs -> crates/graph/src/tensor.rs",
    "crates/graph/src/ops/reduce.rs -> crates/graph/src/ops/mod.rs",
    "crates/graph/src/ops/reduce.rs -> crates/graph/src/tensor.rs",
    "crates/graph/src/ops/shape.rs -> crates/graph/src/ops/cpu_kernels.rs",
    "crates/graph/src/ops/shape.rs -> crates/graph/src/ops/mod.rs",
    "crates/graph/src/ops/shape.rs -> crates/graph/src/tensor.rs",
    "crates/graph/src/ops/winograd.rs -> crates/graph/src/ops/avx512.rs",
    "crates/graph/src/ops/winograd.rs -> crates/graph/src/ops/cpu_kernels.rs",
    "crates/graph/src/ops/winograd.rs -> crates/graph/src/ops/mod.rs",
];

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut edges = BTreeSet::new();
    for root in CRATES {
        edges.extend(crate_edges(&repo, root));
    }
    let known: BTreeSet<(String, String)> = KNOWN
        .iter()
        .map(|e| {
            let (a, b) = e.split_once(" -> ").expect("KNOWN entries read `importer -> imported`");
            (a.to_string(), b.to_string())
        })
        .collect();
    // A known edge stays listed only while it closes a circle.
    let all = circles(&edges);
    let in_circle = |(a, b): &(String, String)| all.iter().any(|c| c.contains(a) && c.contains(b));
    let stale: Vec<_> = known.iter().filter(|e| !edges.contains(*e) || !in_circle(e)).collect();
    let rest: BTreeSet<_> = edges.difference(&known).cloned().collect();
    let circles = circles(&rest);
    let mut problems = String::new();
    for (a, b) in &stale {
        problems += &format!("no longer in a circle, remove from KNOWN: \"{a} -> {b}\"\n");
    }
    for members in &circles {
        problems += &format!("files importing each other in a circle: {}\n", members.join(", "));
        for (a, b) in edges.iter().filter(|(a, b)| members.contains(a) && members.contains(b)) {
            problems += &format!("    \"{a} -> {b}\",\n");
        }
    }
    assert!(problems.is_empty(), "{problems}");
}

/// Every import edge between two files of one crate.
fn crate_edges(repo: &Path, root: &str) -> BTreeSet<(String, String)> {
    let dir = repo.join(root);
    let mut files = BTreeMap::new(); // module path -> file (relative to the repo)
    collect(repo, &dir, &dir, &mut files);
    let texts: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|(m, f)| (m.clone(), strip_tests(&code_only(&std::fs::read_to_string(repo.join(f)).unwrap()))))
        .collect();
    // Child modules are named without a prefix (`nn::conv(…)`, `use nn::Conv`).
    let children = |module: &Vec<String>| -> BTreeSet<String> {
        files
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .map(|m| m.last().unwrap().clone())
            .collect()
    };
    let relative = |path: Vec<String>, children: &BTreeSet<String>| {
        if children.contains(&path[0]) { [vec!["self".to_string()], path].concat() } else { path }
    };
    // `pub use` re-exports: (module, name) -> path of what it names.
    let mut reexports = BTreeMap::new();
    for (module, text) in &texts {
        let children = children(module);
        for stmt in statements(text).filter(|s| s.starts_with("pub use ") || s.starts_with("pub(crate) use ")) {
            let tree = stmt.split_once("use ").unwrap().1;
            for path in use_paths(tree) {
                if let Some(abs) = absolute(module, &relative(path.clone(), &children)) {
                    let name = path.last().unwrap().clone();
                    if name != "*" && name != "self" {
                        reexports.insert((module.clone(), name), abs);
                    }
                }
            }
        }
    }
    let mut edges = BTreeSet::new();
    for (module, text) in &texts {
        let children = children(module);
        for path in paths(text, &children) {
            let Some(abs) = absolute(module, &relative(path, &children)) else { continue };
            let target = resolve(&abs, &files, &reexports, 0);
            if let Some(target) = target.filter(|t| t != module) {
                edges.insert((files[module].clone(), files[&target].clone()));
            }
        }
    }
    edges
}

fn collect(repo: &Path, root: &Path, dir: &Path, files: &mut BTreeMap<Vec<String>, String>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(repo, root, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap();
            let mut module: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            let last = module.pop().unwrap();
            match last.as_str() {
                "lib.rs" | "main.rs" | "mod.rs" => {}
                _ => module.push(last.trim_end_matches(".rs").to_string()),
            }
            let shown = path.strip_prefix(repo).unwrap();
            files.insert(module, shown.to_string_lossy().into_owned());
        }
    }
}

/// The module an item path names, following re-exports; `None` outside the crate.
fn resolve(
    path: &[String],
    files: &BTreeMap<Vec<String>, String>,
    reexports: &BTreeMap<(Vec<String>, String), Vec<String>>,
    depth: usize,
) -> Option<Vec<String>> {
    let n = (0..=path.len()).rev().find(|n| files.contains_key(&path[..*n]))?;
    let module = path[..n].to_vec();
    match path.get(n) {
        Some(name) if depth < 8 => match reexports.get(&(module.clone(), name.clone())) {
            Some(to) if to.as_slice() != path => {
                let mut next = to.clone();
                next.extend_from_slice(&path[n + 1..]);
                resolve(&next, files, reexports, depth + 1).or(Some(module))
            }
            _ => Some(module),
        },
        _ => Some(module),
    }
}

/// `crate::`/`super::`/`self::` paths made absolute from `module`; `None` for other crates.
fn absolute(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base = module.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some("self") => rest = &rest[1..],
        _ => return None,
    }
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(base)
}

/// Every path in the code that starts at `crate`, `super` or one of the `children` modules, `use`
/// trees expanded.
fn paths(text: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut out = vec![];
    for stmt in statements(text).filter(|s| s.starts_with("use ") || s.contains(" use ")) {
        let tree = &stmt[stmt.find("use ").unwrap() + 4..];
        out.extend(use_paths(tree).into_iter().filter(|p| {
            matches!(p[0].as_str(), "crate" | "super" | "self") || (p.len() > 1 && children.contains(&p[0]))
        }));
    }
    let bytes = text.as_bytes();
    let starts = ["crate", "super"].into_iter().map(String::from).chain(children.iter().cloned());
    for start in starts.map(|s| s + "::") {
        let start = start.as_str();
        let mut from = 0;
        while let Some(i) = text[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':') {
                continue;
            }
            let end = text[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(text.len(), |e| at + e);
            let path: Vec<String> =
                text[at..end].split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
            // `crate::{…}` is a use tree, read above.
            if path.len() > 1 {
                out.push(path);
            }
        }
    }
    out
}

/// The paths of a `use` tree (`a::{b, c::d as e}` -> [a, b], [a, c, d]).
fn use_paths(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = vec![];
    expand(&tree, &mut vec![], &mut out);
    out
}

fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim().trim_end_matches(';').trim();
    let segments = |s: &str| s.split("::").map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect::<Vec<_>>();
    if let Some(open) = tree.find('{') {
        let n = prefix.len();
        prefix.extend(segments(&tree[..open]));
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], prefix, out);
        prefix.truncate(n);
    } else if !tree.is_empty() {
        let mut path = prefix.clone();
        path.extend(segments(tree.split(" as ").next().unwrap()));
        out.push(path);
    }
}

/// Statements and items split at `;` and line ends (`use` trees are on one line by now).
fn statements(text: &str) -> impl Iterator<Item = &str> {
    text.split([';', '\n']).map(str::trim).filter(|s| !s.is_empty())
}

/// The source with comments, string and char literals blanked out, and multi-line `use` trees
/// joined onto one line.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) && !prev_ident(b, i) {
            // Raw string: r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            out.push_str("\"\"");
            i = j + close.len();
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '{') or a lifetime ('a).
            let lit = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..].iter().position(|&x| x == b'\'').map(|p| i + 3 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 3)
            } else {
                None
            };
            match lit {
                Some(end) => {
                    out.push_str("' '");
                    i = end;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    join_use_trees(&out)
}

fn prev_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

fn join_use_trees(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut in_use = false;
    for line in code.lines() {
        let t = line.trim_start();
        if !in_use && (t.starts_with("use ") || t.starts_with("pub use ") || t.starts_with("pub(crate) use ")) {
            in_use = !t.contains(';');
            out.push_str(line);
            out.push(if in_use { ' ' } else { '\n' });
        } else if in_use {
            in_use = !t.contains(';');
            out.push_str(t);
            out.push(if in_use { ' ' } else { '\n' });
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The code without its `#[cfg(test)]` items (test modules import what they test).
fn strip_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // Skip the item: up to its first `;` at depth 0 or its closing brace.
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after.char_indices().skip("#[cfg(test)]".len()) {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The circles of a directed graph: its strongly connected components of two or more files.
fn circles(edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let mut next: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    let reach = |from: &String| {
        let mut seen = BTreeSet::from([from.clone()]);
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for m in next.get(&n).into_iter().flatten() {
                if seen.insert((*m).clone()) {
                    todo.push((*m).clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> = nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = vec![];
    for n in &nodes {
        if done.contains(*n) {
            continue;
        }
        let members: Vec<String> =
            reachable[n].iter().filter(|m| reachable[m].contains(*n)).cloned().collect();
        done.extend(members.iter().cloned());
        if members.len() > 1 {
            out.push(members);
        }
    }
    out
}
