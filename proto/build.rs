//! Compiles `closer/v1/*.proto` with protox (no system protoc) and writes the file descriptor set
//! that the server's reflection service publishes.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "closer/v1/assistant.proto",
        "closer/v1/knowledge.proto",
        "closer/v1/intents.proto",
        "closer/v1/sales.proto",
        "closer/v1/webhooks.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("closer_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
