//! Generates the clew.v1 types and services. `protox` compiles the .proto in
//! pure Rust, so building clew needs no `protoc` on the machine.

use protox::prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/clew/v1/tracer.proto"];
    let includes = ["proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, includes)?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let fds_path = out.join("clew_descriptor.bin");
    std::fs::write(&fds_path, fds.encode_to_vec())?;
    let mut config = prost_build::Config::new();
    config.file_descriptor_set_path(&fds_path).skip_protoc_run();
    // Replicated spans stay encoded: slices of the request, written to the
    // replica log as they came.
    config.bytes([
        ".clew.v1.ReplicateRequest.spans",
        ".clew.v1.ReplicateRequest.otlp",
    ]);
    tonic_prost_build::configure().compile_with_config(config, &protos, &includes)?;
    Ok(())
}
