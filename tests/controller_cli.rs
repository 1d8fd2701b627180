//! The CLI's errors at the edge, without root or an engine: an unreachable engine names the
//! address tried, a bad lab file names the file and the item.
use std::process::Command;

fn bridgewall(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bridgewall"))
        .args(args)
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn unreachable_engine_names_the_address() {
    let (ok, text) = bridgewall(&[
        "docker-state",
        "--docker-host",
        "unix:///nonexistent/bw.sock",
    ]);
    assert!(!ok);
    assert!(
        text.contains("cannot reach the Docker engine at unix:///nonexistent/bw.sock"),
        "{text}"
    );
    assert!(text.contains("hint:"), "{text}");
    let (ok, text) = bridgewall(&["run", "--docker-host", "ssh://somewhere"]);
    assert!(!ok);
    assert!(
        text.contains("unsupported Docker address \"ssh://somewhere\""),
        "{text}"
    );
}

#[test]
fn bad_lab_file_names_file_and_item() {
    let dir = std::env::temp_dir().join(format!("bw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[bridge]\nsubnet = \"10.1.0.0/24\"\ngateway = \"10.1.0.1\"\n[[container]]\nname = \"a\"\nip = \"10.2.0.2\"\n",
    )
    .unwrap();
    let (ok, text) = bridgewall(&["lab", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok);
    assert!(
        text.contains("bad.toml") && text.contains("container a"),
        "{text}"
    );
}

/// Writes `wat` as a binary module under a fresh temporary directory.
fn wasm_file(name: &str, wat: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bw-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    path
}

#[test]
fn trace_runs_user_modules_before_the_compiled_policy() {
    let lab = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lab/walkthrough.toml");
    let module = wasm_file(
        "drop-icmp-echo",
        include_str!("../rules-wasm/examples/wat/drop-icmp-echo.wat"),
    );
    let m = module.to_str().unwrap();
    // Without the module the host may ping any container (Docker's semantics)...
    let (ok, text) = bridgewall(&["trace", "--lab", lab, "host", "client3", "icmp", "0"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("accept") && !text.contains("drop-icmp-echo"),
        "{text}"
    );
    // ...with it, the user module decides first: client3 (port 3) is not pinged.
    let (ok, text) = bridgewall(&[
        "trace", "--lab", lab, "--module", m, "host", "client3", "icmp", "0",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("drop-icmp-echo.wasm") && text.contains("policy module"),
        "{text}"
    );
    assert!(
        text.contains("┆ drop") && text.contains("a user module decided"),
        "{text}"
    );
    // What the module leaves (Continue) the compiled policy decides: the link still opens.
    let (ok, text) = bridgewall(&[
        "trace",
        "--lab",
        lab,
        "--module",
        m,
        "client3",
        "nginx_server2",
        "tcp",
        "80",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("link client3") && text.contains("agree"),
        "{text}"
    );
    std::fs::remove_dir_all(module.parent().unwrap()).unwrap();
}

#[test]
fn a_module_with_a_wasi_import_is_refused_naming_the_file_and_the_import() {
    let lab = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lab/walkthrough.toml");
    let module = wasm_file(
        "wants-wasi",
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "bw_abi_version") (result i32) (i32.const 1))
             (func (export "bw_init") (result i32) (i32.const 1024))
             (func (export "bw_evaluate") (param i32)))"#,
    );
    let m = module.to_str().unwrap();
    let (ok, text) = bridgewall(&[
        "trace", "--lab", lab, "--module", m, "host", "client3", "icmp", "0",
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(m) && text.contains("wasi_snapshot_preview1.fd_write"),
        "{text}"
    );
    std::fs::remove_dir_all(module.parent().unwrap()).unwrap();
}

#[test]
fn trace_explains_how_a_later_fragment_follows_its_first() {
    let lab = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lab/walkthrough.toml");
    // Over the link (client3 -> nginx_server2:80): the datagram's later fragments pass.
    let (ok, text) = bridgewall(&[
        "trace",
        "--lab",
        lab,
        "--fragment",
        "client3",
        "nginx_server2",
        "udp",
        "80",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("later fragment"), "{text}");
    // The link opens TCP 80 only: a UDP datagram to 80 is dropped, fragments included.
    assert!(text.contains("dropped too (fragment_denied)"), "{text}");
    let (ok, text) = bridgewall(&[
        "trace",
        "--lab",
        lab,
        "--fragment",
        "client3",
        "nginx_server2",
        "tcp",
        "80",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("it passes, sent where the first fragment went"),
        "{text}"
    );
    // Without --fragment there is no such row.
    let (ok, text) = bridgewall(&[
        "trace",
        "--lab",
        lab,
        "client3",
        "nginx_server2",
        "tcp",
        "80",
    ]);
    assert!(ok && !text.contains("later fragment"), "{text}");
}

/// The repository's own WAT example loads as a `--module` (text format accepted), and a
/// corrupt `.wasm` is refused in one readable line naming the file, not a dump of bytes.
#[test]
fn wat_modules_load_and_corrupt_ones_are_one_readable_line() {
    let lab = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lab/walkthrough.toml");
    let wat = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rules-wasm/examples/wat/drop-icmp-echo.wat"
    );
    let (ok, text) = bridgewall(&[
        "trace", "--lab", lab, "--module", wat, "host", "client3", "icmp", "0",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("drop-icmp-echo.wat"), "{text}");
    let dir = std::env::temp_dir().join(format!("bw-cli-{}-corrupt", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm\x07\0\0\0garbage").unwrap();
    let bad_text = dir.join("bad.wat");
    std::fs::write(&bad_text, "(module (func (export \"x\") (i32.bogus)))").unwrap();
    for (file, what) in [
        (&corrupt, "not a valid WebAssembly module"),
        (&bad_text, "not valid WebAssembly text"),
    ] {
        let (ok, text) = bridgewall(&[
            "trace",
            "--lab",
            lab,
            "--module",
            file.to_str().unwrap(),
            "host",
            "client3",
            "icmp",
            "0",
        ]);
        assert!(!ok);
        let line = text
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no `{what}` in: {text}"));
        assert!(
            line.contains(file.file_name().unwrap().to_str().unwrap()),
            "{line}"
        );
        assert!(!text.contains("expected=["), "no dump of bytes: {text}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Shell completions and the man page come from the clap definitions, every subcommand in.
#[test]
fn completions_and_man_page_cover_the_subcommands() {
    let (ok, bash) = bridgewall(&["completions", "bash"]);
    assert!(ok && bash.contains("_bridgewall"), "{bash}");
    for sub in ["run", "lab", "trace", "restore", "rules", "import"] {
        assert!(bash.contains(sub), "completions lack `{sub}`");
    }
    let (ok, man) = bridgewall(&["man"]);
    assert!(ok && man.contains(".TH bridgewall 1"), "{man}");
    assert!(
        man.contains("AF_XDP"),
        "the man page says what bridgewall is"
    );
}
