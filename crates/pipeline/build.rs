//! Embeds every model card of `models/` in the library, so a new card needs no code change.

use std::fmt::Write;
use std::path::Path;

fn main() {
    // Read at run time: a build script compiled from another checkout sharing the target dir
    // must still look at this one.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("../../models");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("models/ directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut code = String::from("&[\n");
    for n in &names {
        let path = dir.join(format!("{n}.toml"));
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(code, "    ({n:?}, include_str!({:?})),", path.canonicalize().unwrap().display().to_string()).unwrap();
    }
    code.push(']');
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("cards.rs");
    std::fs::write(out, code).unwrap();
}
