//! Generates the gRPC code and the reflection descriptor set from `proto/`
//! with protox, so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/mindoo/replica/v1/store.proto",
        "proto/mindoo/replica/v1/replication.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("mindoo_replica_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::proto::codec::Codec")
        .compile_fds(fds)?;
    Ok(())
}
