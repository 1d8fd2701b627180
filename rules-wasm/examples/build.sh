#!/bin/sh
# Builds the Rust example policies for wasm32-unknown-unknown into rules-wasm/examples/out/
# (where the ignored test `examples::rust_examples_load_and_decide` looks for them).
# Needs the target: `rustup target add wasm32-unknown-unknown`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
target_dir=${CARGO_TARGET_DIR_WASM:-$here/../../target/wasm-examples}
mkdir -p "$here/out"
for ex in dns-only conn-rate-limit; do
    CARGO_TARGET_DIR="$target_dir" cargo build --release --target wasm32-unknown-unknown \
        --manifest-path "$here/$ex/Cargo.toml"
    crate=$(echo "bw-example-$ex" | tr - _)
    cp "$target_dir/wasm32-unknown-unknown/release/$crate.wasm" "$here/out/$ex.wasm"
    echo "built $here/out/$ex.wasm ($(wc -c < "$here/out/$ex.wasm") bytes)"
done
