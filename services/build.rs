//! Generates the demo services' types (`clew.demo.v1`) with protox, so no
//! `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/clew/demo/v1/demo.proto"];
    let includes = ["proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, includes)?;
    let mut config = prost_build::Config::new();
    config.skip_protoc_run();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let fds_path = out.join("demo_descriptor.bin");
    std::fs::write(&fds_path, protox::prost::Message::encode_to_vec(&fds))?;
    config.file_descriptor_set_path(&fds_path);
    tonic_prost_build::configure().compile_with_config(config, &protos, &includes)?;
    Ok(())
}
