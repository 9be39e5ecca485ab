//! Generates the gateway's Rust bindings from `proto/gateway.proto` with protoc
//! (Debian's `protobuf-compiler`; `PROTOC` overrides the path).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/gateway.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/gateway.proto"], &["proto"])?;
    Ok(())
}
