//! Generates the messages and the ttrpc client/server of proto/agent.proto
//! into OUT_DIR with the pure-Rust protobuf parser (no protoc needed).

use std::path::Path;

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    generate(Path::new(&out_dir), ttrpc_codegen::Customize::default())?;
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        strip_inner_attributes(&Path::new(&out_dir).join(name))?;
    }
    if std::env::var_os("CARGO_FEATURE_ASYNC_CLIENT").is_some() {
        // The same service's async client (the runtime's; the agent keeps
        // the sync server), into its own directory: only its
        // agent_ttrpc.rs is used, next to the messages above.
        let async_dir = Path::new(&out_dir).join("async");
        std::fs::create_dir_all(&async_dir)?;
        let customize = ttrpc_codegen::Customize {
            async_client: true,
            ..Default::default()
        };
        generate(&async_dir, customize)?;
        strip_inner_attributes(&async_dir.join("agent_ttrpc.rs"))?;
    }
    Ok(())
}

/// The messages and the service glue of proto/agent.proto, into `out_dir`.
fn generate(out_dir: &Path, customize: ttrpc_codegen::Customize) -> std::io::Result<()> {
    ttrpc_codegen::Codegen::new()
        .out_dir(out_dir)
        .input("proto/agent.proto")
        .include("proto")
        .rust_protobuf()
        .customize(customize)
        .run()
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
