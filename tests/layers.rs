//! The layers of `src/` run one way, as ARCHITECTURE.md draws them: every `crate::<module>`
//! a file names (outside comments and its `#[cfg(test)]` part) is in a layer below its
//! own, or in the same layer without a cycle. Read from the source, so a new upward
//! import fails here with the file that made it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules by layer, lowest first (the same table as ARCHITECTURE.md).
const LAYERS: &[&[&str]] = &[
    &[
        "model",
        "fsutil",
        "failpoint",
        "panics",
        "memory",
        "device",
        "version",
    ],
    &["config"],
    &["source", "bundle", "slot", "boot", "state"],
    &["mcu", "install"],
    &["agent"],
    &["update", "service"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// `crate::x` references of one file's non-test code, comments left out.
fn references(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
        // `use crate::{a::x, b}` names several modules at once.
        if let Some(group) = line.trim_start().strip_prefix("use crate::{") {
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// module -> (module it names -> a file that names it)
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "main" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for r in references(&text) {
            if r != top {
                g.entry(top.clone())
                    .or_default()
                    .entry(r)
                    .or_insert_with(|| rel.display().to_string());
            }
        }
    }
    g
}

#[test]
fn every_module_has_a_layer() {
    for (m, names) in graph() {
        assert!(layer_of(&m).is_some(), "src/{m} is in no layer of LAYERS");
        for n in names.keys() {
            assert!(
                layer_of(n).is_some(),
                "crate::{n} (named by src/{m}) is in no layer"
            );
        }
    }
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let mut wrong = Vec::new();
    for (m, names) in graph() {
        let Some(own) = layer_of(&m) else {
            continue;
        };
        for (n, file) in names {
            if layer_of(&n).is_some_and(|l| l > own) {
                wrong.push(format!("src/{file} ({m}, layer {own}) imports crate::{n}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run upward:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph();
    // Depth-first search with colours; a grey module met again closes a cycle.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeMap<String, String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_owned(), 1);
        path.push(m.to_owned());
        for n in g
            .get(m)
            .map(|e| e.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            match state.get(&n).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|p| *p == n).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(n);
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(&n, g, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(m.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if state.get(m).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(m, &g, &mut state, &mut Vec::new()) {
                panic!("import cycle: {}", c.join(" -> "));
            }
        }
    }
}

#[test]
fn the_reader_of_references_sees_what_it_should() {
    let text = "//! see crate::agent\nuse crate::{model::X, state};\nfn f() { crate::boot::open(); } // crate::cli\n#[cfg(test)]\nuse crate::service;";
    let r = references(text);
    assert_eq!(
        r.into_iter().collect::<Vec<_>>(),
        ["boot", "model", "state"]
    );
}
