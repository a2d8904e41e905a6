//! The crate's module graph has no cycle, and stays so: every `crate::`,
//! `super::` and `self::` path (and every path through a declared child module)
//! in `src/` is an edge from the module that names it to the deepest module it
//! reaches; a cycle fails with the modules on it and the lines that close it.
//!
//! A dependency-free module (`mcp`, `upstream`, protocol types) is what breaks
//! cycles (STYLE.md, "leaf modules"); this test keeps new code from knotting
//! them again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One module: its path (`proxy::forward`) and source text.
struct Module {
    path: Vec<String>,
    file: PathBuf,
    text: String,
}

fn modules(src: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let p = entry.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            match parts.last().map(String::as_str) {
                Some("main") if parts.len() == 1 => continue, // the binary, not the library
                Some("lib") if parts.len() == 1 => parts.clear(),
                Some("mod") => {
                    parts.pop();
                }
                _ => {}
            }
            let text = std::fs::read_to_string(&p).expect("read module");
            out.push(Module {
                path: parts,
                file: p,
                text,
            });
        }
    }
    out
}

/// Source with comments and string/char literals blanked (lengths kept, so
/// line numbers stay right).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out.push(' ');
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                out.push(if b[i] == b'\n' { '\n' } else { ' ' });
                i += 1;
            }
            out.push_str("  ");
            i += 2;
        } else if b[i] == b'r'
            && matches!(b.get(i + 1), Some(b'#') | Some(b'"'))
            && !ident_byte(b, i.wrapping_sub(1))
        {
            // raw string r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&b'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &c in &b[i..j.min(b.len())] {
                out.push(if c == b'\n' { '\n' } else { ' ' });
            }
            i = j;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            for &c in &b[i..(j + 1).min(b.len())] {
                out.push(if c == b'\n' { '\n' } else { ' ' });
            }
            i = j + 1;
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            out.push_str("   ");
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            let mut j = i + 2;
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            for _ in i..=j.min(b.len() - 1) {
                out.push(' ');
            }
            i = j + 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn ident_byte(b: &[u8], i: usize) -> bool {
    b.get(i)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Every path the code names, starting at byte `at` after a root keyword,
/// expanded through `{a, b::c}` groups: returns the segment lists.
fn paths_from(code: &str, at: usize) -> Vec<Vec<String>> {
    fn parse(b: &[u8], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
        let mut segs = prefix;
        loop {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if b.get(i) == Some(&b'{') {
                i += 1;
                loop {
                    i = parse(b, i, segs.clone(), out);
                    while i < b.len() && b[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    match b.get(i) {
                        Some(b',') => {
                            i += 1;
                            while i < b.len() && b[i].is_ascii_whitespace() {
                                i += 1;
                            }
                            if b.get(i) == Some(&b'}') {
                                return i + 1;
                            }
                        }
                        Some(b'}') => return i + 1,
                        _ => return i,
                    }
                }
            }
            let start = i;
            while ident_byte(b, i) {
                i += 1;
            }
            if i == start {
                out.push(segs);
                return i;
            }
            segs.push(String::from_utf8_lossy(&b[start..i]).into_owned());
            if b.get(i) == Some(&b':') && b.get(i + 1) == Some(&b':') {
                i += 2;
                continue;
            }
            out.push(segs);
            return i;
        }
    }
    let mut out = Vec::new();
    parse(code.as_bytes(), at, Vec::new(), &mut out);
    out
}

#[test]
fn the_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let known: BTreeSet<Vec<String>> = mods.iter().map(|m| m.path.clone()).collect();
    // The deepest known module on `path`.
    let resolve = |path: &[String]| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| known.contains(p))
    };
    // edges[from][to] = first place (file:line) that makes the edge.
    let mut edges: BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> = BTreeMap::new();
    for m in &mods {
        let code = code_only(&m.text);
        let children: Vec<String> = known
            .iter()
            .filter(|p| p.len() == m.path.len() + 1 && p.starts_with(&m.path))
            .map(|p| p[m.path.len()].clone())
            .collect();
        let b = code.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if !ident_byte(b, i) || ident_byte(b, i.wrapping_sub(1)) {
                i += 1;
                continue;
            }
            let start = i;
            while ident_byte(b, i) {
                i += 1;
            }
            let word = &code[start..i];
            if !(b.get(i) == Some(&b':') && b.get(i + 1) == Some(&b':')) {
                continue;
            }
            // `x::` preceded by `::` is the middle of a longer path, not a root.
            if start >= 2 && &code[start - 2..start] == "::" {
                continue;
            }
            let base: Vec<String> = match word {
                "crate" => Vec::new(),
                "super" => {
                    let mut p = m.path.clone();
                    // `super` of a file module is its parent; in an inline
                    // `mod tests` it is the file's module itself.
                    let in_inline_mod = code[..start].contains("mod tests");
                    if !in_inline_mod {
                        p.pop();
                    }
                    p
                }
                "self" => m.path.clone(),
                w if children.iter().any(|c| c == w) => {
                    let mut p = m.path.clone();
                    p.push(w.to_owned());
                    let line = code[..start].matches('\n').count() + 1;
                    let to = resolve(&p).expect("child module is known");
                    edges
                        .entry(m.path.clone())
                        .or_default()
                        .entry(to)
                        .or_insert_with(|| format!("{}:{line}", m.file.display()));
                    continue;
                }
                _ => continue,
            };
            let line = code[..start].matches('\n').count() + 1;
            for rest in paths_from(&code, i + 2) {
                let mut full = base.clone();
                full.extend(rest);
                if let Some(to) = resolve(&full) {
                    if to != m.path && !to.is_empty() {
                        edges
                            .entry(m.path.clone())
                            .or_default()
                            .entry(to)
                            .or_insert_with(|| format!("{}:{line}", m.file.display()));
                    }
                }
            }
        }
    }
    // Tarjan's strongly connected components.
    let nodes: Vec<Vec<String>> = known.iter().cloned().collect();
    let index_of = |p: &Vec<String>| nodes.iter().position(|n| n == p).expect("known");
    let adj: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            edges
                .get(n)
                .map(|e| e.keys().map(index_of).collect())
                .unwrap_or_default()
        })
        .collect();
    let mut cycles = Vec::new();
    let mut state = Tarjan {
        index: vec![None; nodes.len()],
        low: vec![0; nodes.len()],
        on_stack: vec![false; nodes.len()],
        stack: Vec::new(),
        next: 0,
    };
    for v in 0..nodes.len() {
        if state.index[v].is_none() {
            state.visit(v, &adj, &mut cycles);
        }
    }
    let name = |i: usize| {
        if nodes[i].is_empty() {
            "crate".to_owned()
        } else {
            nodes[i].join("::")
        }
    };
    let report: Vec<String> = cycles
        .iter()
        .map(|scc: &Vec<usize>| {
            let mut s = format!(
                "cycle among {}:",
                scc.iter().map(|&i| name(i)).collect::<Vec<_>>().join(", ")
            );
            for &a in scc {
                for &b in scc {
                    if let Some(at) = edges.get(&nodes[a]).and_then(|e| e.get(&nodes[b])) {
                        s.push_str(&format!("\n    {} -> {} ({at})", name(a), name(b)));
                    }
                }
            }
            s
        })
        .collect();
    assert!(
        report.is_empty(),
        "the module graph has cycles; put shared definitions in a module both can use \
         (see STYLE.md, \"leaf modules\"):\n{}",
        report.join("\n")
    );
    // The check must see the graph at all: a few edges that certainly exist.
    let has = |a: &str, b: &str| {
        let split = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
        edges
            .get(&split(a))
            .is_some_and(|e| e.contains_key(&split(b)))
    };
    assert!(
        has("proxy::forward", "table"),
        "the scan found no edge proxy::forward -> table"
    );
    assert!(
        has("proxy::affinity", "mcp::tag"),
        "the scan found no edge proxy::affinity -> mcp::tag"
    );
}

struct Tarjan {
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
}

impl Tarjan {
    fn visit(&mut self, v: usize, adj: &[Vec<usize>], out: &mut Vec<Vec<usize>>) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in &adj[v] {
            match self.index[w] {
                None => {
                    self.visit(w, adj, out);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.reverse();
                out.push(scc);
            }
        }
    }
}
