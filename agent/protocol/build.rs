//! Generates the messages and the ttrpc client/server of proto/agent.proto
//! into OUT_DIR with the pure-Rust protobuf parser (no protoc needed).

use std::path::Path;

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .input("proto/agent.proto")
        .include("proto")
        .rust_protobuf()
        .run()?;
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        strip_inner_attributes(&Path::new(&out_dir).join(name))?;
    }
    Ok(())
}

/// `include!` rejects files with inner attributes (`#![...]`, `//!`), which
/// the generators emit; lib.rs sets the lints they carried instead.
fn strip_inner_attributes(path: &Path) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
        .collect();
    std::fs::write(path, kept.join("\n"))
}
