//! Compiles `proto/tollgate/v1/*.proto` with protox (no `protoc` needed) into Rust and a
//! descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/tollgate/v1/common.proto",
        "proto/tollgate/v1/agent.proto",
        "proto/tollgate/v1/manager.proto",
        "proto/tollgate/v1/issue.proto",
        "proto/tollgate/v1/rollout.proto",
        "proto/tollgate/v1/status.proto",
    ];
    // tonic-prost-build prints no rerun-if-changed lines of its own.
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(files)?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("tollgate_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The generated `connect` constructor would clash with the `Connect` rpc; clients
        // build a `Channel` themselves.
        .build_transport(false)
        // A fleet telemetry sample's values (about twenty per GPU, thousands of samples a
        // second at the controller): a B-tree decodes them without hashing each name and
        // regrowing the table as it fills, and encodes them in name order.
        .btree_map(".tollgate.v1.TelemetrySample.values")
        // Smaller first buffers per call than tonic's 8 KiB (see `LeanCodec`).
        .codec_path("crate::LeanCodec")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
