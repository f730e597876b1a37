//! The layer's shell functions and variables, run and read as bitbake would, without
//! bitbake: used by tests/packaging.rs (the class and the recipes' tasks) and
//! tests/uboot_boot.rs (the boot script exactly as the recipe builds it).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The Yocto layer in this tree.
pub const LAYER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/yocto-layer/meta-rota");

/// The value a layer file assigns to `name` (e.g. `ROTA_UBOOT_BOOT:rpi`) with `=`, `?=`
/// or `??=`, quotes removed (one-line assignments only, as the layer writes them).
pub fn layer_var(file: &str, name: &str) -> String {
    let text = std::fs::read_to_string(format!("{LAYER}/{file}")).unwrap();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?.trim_start();
            let rest = ["??=", "?=", "="]
                .iter()
                .find_map(|op| rest.strip_prefix(op))?
                .trim();
            let q = rest.chars().next()?;
            rest.strip_prefix(q)?.strip_suffix(q).map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("{file} assigns no {name}"))
}

/// Runs the shell function `header` (e.g. `IMAGE_CMD:rota () {`) of a layer file as
/// bitbake would: bitbake variables expanded from `vars` (every `${UPPER_CASE}` in the
/// body must have a value; lower-case ones are left, as bitbake leaves unknown
/// variables), `bbfatal` failing, and `bin` first in PATH.
pub fn run_shell(file: &str, header: &str, vars: &[(&str, String)], bin: &Path) -> Output {
    let text = std::fs::read_to_string(format!("{LAYER}/{file}")).unwrap();
    let header = format!("{header}\n");
    let start = text
        .find(&header)
        .unwrap_or_else(|| panic!("{header:?} in {file}"))
        + header.len();
    let end = start + text[start..].find("\n}\n").unwrap();
    let mut body = text[start..end].to_owned();
    let mut unknown = Vec::new();
    let mut i = 0;
    while let Some(off) = body[i..].find("${") {
        let s = i + off;
        let e = s + body[s..].find('}').unwrap();
        let name = &body[s + 2..e];
        if name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            match vars.iter().find(|(k, _)| *k == name) {
                Some((_, v)) => {
                    body.replace_range(s..=e, v);
                    i = s + v.len();
                    continue;
                }
                None => unknown.push(name.to_owned()),
            }
        }
        i = e + 1;
    }
    assert!(
        unknown.is_empty(),
        "bitbake variables in {file} without a test value: {unknown:?}"
    );
    let script = format!("set -e\nbbfatal() {{ echo \"FATAL: $*\" >&2; exit 1; }}\n{body}\n");
    let path = std::env::var("PATH").unwrap();
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("PATH", format!("{}:{path}", bin.display()))
        .output()
        .unwrap()
}
