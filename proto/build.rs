//! Compiles `linesweep.proto` with protox (pure Rust: no `protoc` on the build machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Nothing upstream emits this; without it Cargo reruns the script on every change.
    println!("cargo:rerun-if-changed=linesweep.proto");
    let fds = protox::compile(["linesweep.proto"], ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
