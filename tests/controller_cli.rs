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
