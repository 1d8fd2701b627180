//! A real Docker engine for tests, inside a network namespace of its own.
//!
//! Follows the recipe of the team's engine-in-a-namespace notes: Debian's docker.io (installed when
//! missing, with a policy-rc.d so no daemon starts in the root namespace), `dockerd` started
//! with `nsenter --net=/run/netns/NAME` (not `ip netns exec`, which hides the cgroup mounts),
//! its own data root, exec root, pidfile and socket under a unique temporary directory, and an
//! image imported offline from Debian's busybox-static. Everything — containers, the daemon
//! (by PID), its containerd and shims (by PID, found by their paths), mounts under the
//! directory, the namespaces — is removed on drop, also when the test fails.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);
static INSTALL: Once = Once::new();

/// An engine running in its own namespace. Drop tears it all down.
pub(crate) struct DockerEngine {
    /// The engine's network namespace (holds docker0 and the containers' host-side veths).
    pub netns: String,
    /// The second namespace, an "outside host" on a veth to the engine's namespace.
    pub outside_netns: String,
    /// Working directory (data root, exec root, socket, logs).
    pub dir: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    daemon: Option<Child>,
    icc: bool,
    live_restore: bool,
    /// `fixed-cidr-v6` when the engine gives containers IPv6 addresses on the default bridge.
    ipv6_cidr: Option<String>,
    /// `"userland-proxy"` in the daemon config (written only when false: the default is on).
    userland_proxy: bool,
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Debian's nginx on the host, for the nginx image; no daemon is started (policy-rc.d).
pub(crate) fn ensure_host_nginx() {
    static NGINX: Once = Once::new();
    NGINX.call_once(|| {
        if Path::new("/usr/sbin/nginx").exists() {
            return;
        }
        apt_install_without_daemons("nginx");
    });
}

/// `apt-get install PKG` with a policy-rc.d in place, so the package starts no service in the
/// root namespace.
fn apt_install_without_daemons(pkg: &str) {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let made_policy = !policy.exists();
    if made_policy {
        fs::write(policy, "#!/bin/sh\nexit 101\n").unwrap();
        run_ok(Command::new("chmod").args(["+x", "/usr/sbin/policy-rc.d"]));
    }
    run_ok(Command::new("apt-get").args(["update", "-qq"]));
    run_ok(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", pkg])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if made_policy {
        let _ = fs::remove_file(policy);
    }
}

/// Installs Debian's `package` (with no service started: policy-rc.d) if `command` is not
/// on PATH, e.g. `ensure_command("ipset", "ipset")`.
pub(crate) fn ensure_command(command: &str, package: &str) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if have(command) {
        return;
    }
    apt_install_without_daemons(package);
    assert!(
        have(command),
        "{package} installed but {command} is not on PATH"
    );
}

/// Installs Debian's docker.io if dockerd is missing, without starting a daemon.
pub(crate) fn ensure_docker_installed() {
    INSTALL.call_once(|| {
        if have("dockerd") {
            return;
        }
        apt_install_without_daemons("docker.io");
        assert!(
            have("dockerd"),
            "docker.io installed but dockerd is not on PATH"
        );
    });
}

impl DockerEngine {
    /// Creates the namespaces and starts an engine with `{"icc": icc}`, then imports the
    /// `lab/busybox` image (busybox httpd on port 80, `EXPOSE 80`).
    pub(crate) fn start(icc: bool) -> DockerEngine {
        Self::start_with(icc, false)
    }

    /// Like [`DockerEngine::start`]; with `live_restore` the engine leaves its containers
    /// running when it stops and takes them back when it starts again.
    pub(crate) fn start_with(icc: bool, live_restore: bool) -> DockerEngine {
        Self::start_full(icc, live_restore, None)
    }

    /// Like [`DockerEngine::start`], with IPv6 on the default bridge: the daemon config adds
    /// `"ipv6": true, "fixed-cidr-v6": CIDR`, so every container also gets an address of
    /// `fixed_cidr_v6` (docker0 takes its first address as the gateway).
    pub(crate) fn start_ipv6(icc: bool, fixed_cidr_v6: &str) -> DockerEngine {
        Self::start_full(icc, false, Some(fixed_cidr_v6.to_string()))
    }

    /// Like [`DockerEngine::start`], with `"userland-proxy": false` in the daemon config:
    /// published ports are served by the kernel's DNAT alone (no docker-proxy), including
    /// from the host's loopback (`route_localnet`) and from the containers themselves
    /// (hairpin mode on their bridge ports, and a MASQUERADE rule for a container reaching
    /// its own published port).
    pub(crate) fn start_without_userland_proxy(icc: bool) -> DockerEngine {
        Self::start_engine(icc, false, None, false)
    }

    fn start_full(icc: bool, live_restore: bool, ipv6_cidr: Option<String>) -> DockerEngine {
        Self::start_engine(icc, live_restore, ipv6_cidr, true)
    }

    fn start_engine(
        icc: bool,
        live_restore: bool,
        ipv6_cidr: Option<String>,
        userland_proxy: bool,
    ) -> DockerEngine {
        ensure_docker_installed();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Short: containerd's unix sockets live under the exec root (108-byte limit).
        let dir = PathBuf::from(format!("/tmp/bwd-{pid}-{n}"));
        let mut engine = DockerEngine {
            netns: format!("bwdock-{pid}-{n}"),
            outside_netns: format!("bwdock-{pid}-{n}-ext"),
            socket: dir.join("docker.sock"),
            dir,
            daemon: None,
            icc,
            live_restore,
            ipv6_cidr,
            userland_proxy,
        };
        // From here on, a panic drops `engine`, which cleans up whatever exists.
        fs::create_dir_all(engine.dir.join("data")).unwrap();
        fs::create_dir_all(engine.dir.join("exec")).unwrap();
        run_ok(Command::new("ip").args(["netns", "add", &engine.netns]));
        run_ok(Command::new("ip").args(["-n", &engine.netns, "link", "set", "lo", "up"]));
        run_ok(Command::new("ip").args(["netns", "add", &engine.outside_netns]));
        run_ok(Command::new("ip").args(["-n", &engine.outside_netns, "link", "set", "lo", "up"]));
        run_ok(Command::new("ip").args([
            "-n",
            &engine.netns,
            "link",
            "add",
            "dh-ext",
            "type",
            "veth",
            "peer",
            "name",
            "ext-dh",
            "netns",
            &engine.outside_netns,
        ]));
        run_ok(Command::new("ip").args([
            "-n",
            &engine.netns,
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            "dh-ext",
        ]));
        run_ok(Command::new("ip").args(["-n", &engine.netns, "link", "set", "dh-ext", "up"]));
        run_ok(Command::new("ip").args([
            "-n",
            &engine.outside_netns,
            "addr",
            "add",
            "198.18.0.2/24",
            "dev",
            "ext-dh",
        ]));
        run_ok(Command::new("ip").args([
            "-n",
            &engine.outside_netns,
            "link",
            "set",
            "ext-dh",
            "up",
        ]));
        engine.start_daemon();
        engine.import_busybox();
        engine
    }

    /// `unix://…` address of the API.
    pub(crate) fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Starts dockerd in the namespace and waits until it answers.
    pub(crate) fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "dockerd already running");
        let ipv6 = match &self.ipv6_cidr {
            Some(cidr) => format!(", \"ipv6\": true, \"fixed-cidr-v6\": \"{cidr}\""),
            None => String::new(),
        };
        let proxy = if self.userland_proxy {
            ""
        } else {
            ", \"userland-proxy\": false"
        };
        fs::write(
            self.dir.join("daemon.json"),
            format!(
                "{{\"icc\": {}, \"live-restore\": {}{ipv6}{proxy}}}\n",
                self.icc, self.live_restore
            ),
        )
        .unwrap();
        let _ = fs::remove_file(&self.socket);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap();
        let child = Command::new("setsid")
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("dockerd")
            .arg("-H")
            .arg(self.host())
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .arg("--config-file")
            .arg(self.dir.join("daemon.json"))
            .args(["--dns", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning dockerd");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.docker(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        panic!("dockerd did not start; log tail:\n{}", tail(&log, 20));
    }

    /// Stops dockerd by its PID (SIGTERM, then SIGKILL after 20 s) and reaps it.
    pub(crate) fn stop_daemon(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        let pid = child.id() as i32;
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Runs the docker client against this engine.
    pub(crate) fn docker(&self, args: &[&str]) -> Output {
        run(Command::new("docker").arg("-H").arg(self.host()).args(args))
    }

    /// Runs the docker client and returns stdout; panics with its stderr on failure.
    pub(crate) fn docker_ok(&self, args: &[&str]) -> String {
        run_ok(Command::new("docker").arg("-H").arg(self.host()).args(args))
    }

    /// Names of the links in the engine's namespace (per `ip -n NS -o link`).
    pub(crate) fn ns_links(&self) -> Vec<String> {
        run_ok(Command::new("ip").args(["-n", &self.netns, "-o", "link", "show"]))
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// Names of the ports of `bridge` in the engine's namespace.
    pub(crate) fn bridge_ports(&self, bridge: &str) -> Vec<String> {
        run_ok(Command::new("ip").args(["-n", &self.netns, "-o", "link", "show", "master", bridge]))
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// Imports `lab/busybox`: busybox-static with its applets, httpd on 80, `EXPOSE 80`.
    pub(crate) fn import_busybox(&self) {
        let img = self.dir.join("img");
        let deb = img.join("deb");
        let x = img.join("x");
        let root = img.join("root");
        for d in [&deb, &x, &root] {
            fs::create_dir_all(d).unwrap();
        }
        run_ok(
            Command::new("apt-get")
                .args(["download", "-qq", "busybox-static"])
                .current_dir(&deb),
        );
        let pkg = fs::read_dir(&deb)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("busybox-static .deb downloaded");
        run_ok(Command::new("dpkg-deb").arg("-x").arg(&pkg).arg(&x));
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "www", "root"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::copy(x.join("bin/busybox"), root.join("bin/busybox")).unwrap();
        // Ask the extracted binary (written by dpkg-deb, another process), not the copy this
        // process just wrote: a test thread forking meanwhile can hold the copy's write
        // descriptor until its exec, and executing the copy then fails with ETXTBSY.
        let applets = run_ok(Command::new(x.join("bin/busybox")).arg("--list"));
        for a in applets.lines().filter(|a| *a != "busybox") {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
        }
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        fs::write(root.join("www/index.html"), "hello from busybox httpd\n").unwrap();
        run_ok(Command::new("chmod").arg("1777").arg(root.join("tmp")));
        self.import_rootfs(
            &root,
            &img.join("rootfs.tar"),
            &[
                "EXPOSE 80",
                "ENV PATH=/bin",
                r#"CMD ["httpd","-f","-v","-p","80","-h","/www"]"#,
            ],
            "lab/busybox:latest",
        );
    }

    /// Imports `lab/nginx`: the busybox rootfs (so containers have `wget`, `ping`, `nc`) plus
    /// Debian's nginx binary (installed on the host when missing, with no daemon started:
    /// policy-rc.d) and the libraries `ldd` lists, serving "hello from nginx" on port 80.
    pub(crate) fn import_nginx(&self) {
        ensure_host_nginx();
        let root = self.dir.join("img/root");
        assert!(root.join("bin/busybox").exists(), "import_busybox first");
        let nginx = Path::new("/usr/sbin/nginx");
        let mut files = vec![nginx.to_path_buf()];
        let ldd = run_ok(Command::new("ldd").arg(nginx));
        for line in ldd.lines() {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = line
                .split("=>")
                .last()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            if path.starts_with('/') {
                files.push(PathBuf::from(path));
            }
        }
        for f in &files {
            let dest = root.join(f.strip_prefix("/").unwrap());
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            // Follow symlinks: the image gets the real bytes under the name the loader asks for.
            fs::copy(fs::canonicalize(f).unwrap(), &dest).unwrap();
        }
        for d in [
            "etc/nginx",
            "var/log/nginx",
            "var/lib/nginx",
            "run",
            "usr/share/nginx/html",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(
            root.join("etc/nginx/nginx.conf"),
            "daemon off;\nuser root;\nworker_processes 1;\npid /run/nginx.pid;\nerror_log stderr;\n\
             events { worker_connections 64; }\n\
             http { access_log off; client_body_temp_path /tmp; proxy_temp_path /tmp;\n\
               fastcgi_temp_path /tmp; uwsgi_temp_path /tmp; scgi_temp_path /tmp;\n\
               server { listen 80; root /usr/share/nginx/html; } }\n",
        )
        .unwrap();
        fs::write(
            root.join("usr/share/nginx/html/index.html"),
            "hello from nginx\n",
        )
        .unwrap();
        self.import_rootfs(
            &root,
            &self.dir.join("img/nginx-rootfs.tar"),
            &["EXPOSE 80", "ENV PATH=/bin:/usr/sbin", r#"CMD ["nginx"]"#],
            "lab/nginx:latest",
        );
    }

    /// Packs `root` into `tar` (numeric owner root) and `docker import`s it as `tag` with the
    /// given `--change` instructions: an image without a registry.
    fn import_rootfs(&self, root: &Path, tar: &Path, changes: &[&str], tag: &str) {
        run_ok(
            Command::new("tar")
                .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
                .arg(root)
                .arg("-cf")
                .arg(tar)
                .arg("."),
        );
        let tar = tar.to_string_lossy().into_owned();
        let mut args = vec!["import"];
        for c in changes {
            args.extend(["--change", c]);
        }
        args.extend([tar.as_str(), tag]);
        self.docker_ok(&args);
    }

    /// `docker run -d --init --name NAME ARGS... IMAGE`; returns the id.
    pub(crate) fn run_image(&self, name: &str, args: &[&str], image: &str) -> String {
        let mut all = vec!["run", "-d", "--init", "--name", name];
        all.extend_from_slice(args);
        all.push(image);
        self.docker_ok(&all)
    }

    /// `docker run -d --init --name NAME ARGS... lab/busybox CMD...`; returns the id.
    pub(crate) fn run_container(&self, name: &str, args: &[&str], cmd: &[&str]) -> String {
        let mut all = vec!["run", "-d", "--init", "--name", name];
        all.extend_from_slice(args);
        all.push("lab/busybox");
        all.extend_from_slice(cmd);
        self.docker_ok(&all)
    }

    /// Fetches `url` from inside `container` (busybox wget, wrapped in `timeout`: its `-T`
    /// segfaults); the body, or None when the connection did not complete.
    pub(crate) fn fetch(&self, container: &str, url: &str) -> Option<String> {
        let out = self.docker(&["exec", container, "timeout", "3", "wget", "-qO-", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One ping from inside `container` to `target` (a name or an address).
    pub(crate) fn ping(&self, container: &str, target: &str) -> bool {
        self.docker(&["exec", container, "ping", "-c", "1", "-W", "1", target])
            .status
            .success()
    }

    /// `docker inspect -f FORMAT NAME`.
    pub(crate) fn inspect(&self, name: &str, format: &str) -> String {
        self.docker_ok(&["inspect", "-f", format, name])
    }

    /// Kills every process whose command line mentions our directory (containerd, shims,
    /// a dockerd that outlived its Child), by PID.
    fn kill_leftovers(&self) {
        let needle = self.dir.to_string_lossy().to_string();
        let me = std::process::id().to_string();
        let Ok(entries) = fs::read_dir("/proc") else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
                continue;
            }
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                let _ = Command::new("kill").args(["-KILL", &name]).status();
            }
        }
    }

    fn unmount_leftovers(&self) {
        let needle = format!("{}/", self.dir.display());
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(&needle) || *p == self.dir.to_string_lossy())
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = self.docker(&args);
            }
        }
        self.stop_daemon();
        // Give containerd a moment to exit after its dockerd, then make sure.
        std::thread::sleep(Duration::from_millis(200));
        self.kill_leftovers();
        self.unmount_leftovers();
        for ns in [&self.outside_netns, &self.netns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A further outside host: namespace `<engine>-ext<n>` on its own veth to the engine's
/// namespace, 198.18.`n`.2 ↔ 198.18.`n`.1. Deleted on drop.
pub(crate) struct OutsideHost {
    /// The namespace.
    pub netns: String,
    /// The engine-side address it reaches the host's published ports on.
    pub host_ip: String,
}

impl OutsideHost {
    /// Creates outside host number `n` (1–254; 0 is the engine's built-in one).
    pub(crate) fn add(engine: &DockerEngine, n: u8) -> OutsideHost {
        let netns = format!("{}-ext{n}", engine.netns);
        let h = OutsideHost {
            netns: netns.clone(),
            host_ip: format!("198.18.{n}.1"),
        };
        let (host_if, peer_if) = (format!("dh-ext{n}"), format!("ext{n}-dh"));
        let (host_cidr, peer_cidr) = (format!("198.18.{n}.1/24"), format!("198.18.{n}.2/24"));
        let e = engine.netns.as_str();
        for args in [
            vec!["netns", "add", &netns],
            vec!["-n", &netns, "link", "set", "lo", "up"],
            vec![
                "-n", e, "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
                "netns", &netns,
            ],
            vec!["-n", e, "addr", "add", &host_cidr, "dev", &host_if],
            vec!["-n", e, "link", "set", &host_if, "up"],
            vec!["-n", &netns, "addr", "add", &peer_cidr, "dev", &peer_if],
            vec!["-n", &netns, "link", "set", &peer_if, "up"],
        ] {
            run_ok(Command::new("ip").args(&args));
        }
        h
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}
