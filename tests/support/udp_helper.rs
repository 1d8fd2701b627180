//! `udpx`, a small UDP echo server and probe for the Docker tests (`docker_fragments`,
//! `docker_hairpin`). busybox (Debian's busybox-static, in the `lab/busybox` image) cannot
//! listen on UDP (its `nc` has no `-u`, and it has no `udpsvd`), so the tests compile this
//! helper with `cc -static` (against the glibc that any Rust toolchain on Linux links with),
//! bind-mount it into the containers at [`IN_CONTAINER`], and run the same binary as is in a
//! namespace (the engine's or an outside host's).
use std::path::{Path, PathBuf};
use std::process::Command;

use super::docker::DockerEngine;

/// Where [`mount`] puts the helper in a container.
pub(crate) const IN_CONTAINER: &str = "/udpx";

/// The helper's source.
///
/// `udpx serve PORT` echoes every datagram whole (IPv4 and IPv6, one dual-stack socket) and
/// logs "from ADDR LEN echoed LEN" (an IPv4 source without its `::ffff:` prefix).
///
/// `udpx probe ADDR PORT WAIT_MS SIZE...` sends, per size, one datagram of SIZE
/// pseudo-random bytes with a single `send` on a fresh socket (a UDP send is one datagram;
/// the return value is checked to be SIZE) and prints "SIZE ok" when the echo is one datagram
/// with the same bytes, else "SIZE timeout|refused|short N|mismatch|error …". Its socket is
/// connected: the kernel hands it only a reply from ADDR:PORT, and an ICMP port unreachable
/// shows as "refused", not as a timeout (a drop).
///
/// `udpx probe-unconnected ADDR PORT WAIT_MS SIZE...` does the same from an *unconnected*
/// socket, which takes a reply from any source, and appends the reply's source: "SIZE ok
/// IP:PORT" when the echo came back from ADDR:PORT, "SIZE wrong-source IP:PORT" when it came
/// from elsewhere (a reply the host did not un-NAT, which a connected socket would never
/// see: a timeout), "SIZE short N IP:PORT", "SIZE mismatch IP:PORT", "SIZE timeout" or "SIZE
/// error …". An unconnected socket is not told of an ICMP error: a refusal is a timeout.
pub(crate) const UDPX_C: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static unsigned char buf[65536], want[65536];

static int serve(int port) {
    struct sockaddr_in6 a6;
    memset(&a6, 0, sizeof a6);
    a6.sin6_family = AF_INET6; a6.sin6_port = htons(port); a6.sin6_addr = in6addr_any;
    int off = 0, s = socket(AF_INET6, SOCK_DGRAM, 0);
    if (s < 0 || setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0 ||
        bind(s, (struct sockaddr *)&a6, sizeof a6) < 0) {
        perror("udpx serve: bind"); return 1;
    }
    printf("listening on %d\n", port);
    for (;;) {
        struct sockaddr_in6 from; socklen_t fl = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, MSG_TRUNC, (struct sockaddr *)&from, &fl);
        if (n < 0) { perror("udpx serve: recvfrom"); continue; }
        char ip[INET6_ADDRSTRLEN] = "?";
        inet_ntop(AF_INET6, &from.sin6_addr, ip, sizeof ip);
        const char *shown = strncmp(ip, "::ffff:", 7) == 0 && strchr(ip, '.') ? ip + 7 : ip;
        ssize_t m = n > (ssize_t)sizeof buf ? -1 : sendto(s, buf, n, 0, (struct sockaddr *)&from, fl);
        printf("from %s %zd echoed %zd\n", shown, n, m);
    }
}

static long now_ms(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

/* " IP:PORT" (" [IP]:PORT" for IPv6) of `a` into `out`. */
static void show(const struct sockaddr_storage *a, char *out, size_t len) {
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)a;
        inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof ip);
        snprintf(out, len, " %s:%d", ip, ntohs(a4->sin_port));
    } else {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)a;
        inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof ip);
        snprintf(out, len, " [%s]:%d", ip, ntohs(a6->sin6_port));
    }
}

/* `a` and `b` are the same address and port. */
static int same_peer(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_addr.s_addr == y->sin_addr.s_addr && x->sin_port == y->sin_port;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0 &&
           x->sin6_port == y->sin6_port;
}

/* One datagram of SIZE bytes to ADDR:PORT and its echo, from a connected socket (`probe`)
   or an unconnected one (`probe-unconnected`): see UDPX_C's doc comment. */
static void probe(const char *addr, int port, int wait_ms, long size, int connected) {
    struct sockaddr_storage ss; socklen_t sl;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET; a4->sin_port = htons(port); sl = sizeof *a4;
    } else if (inet_pton(AF_INET6, addr, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6; a6->sin6_port = htons(port); sl = sizeof *a6;
    } else { printf("%ld error bad-address\n", size); return; }
    if (size < 1 || size > 65000) { printf("%ld error bad-size\n", size); return; }
    int s = socket(ss.ss_family, SOCK_DGRAM, 0);
    if (s < 0 || (connected && connect(s, (struct sockaddr *)&ss, sl) < 0)) {
        printf("%ld error %s:%s\n", size, s < 0 ? "socket" : "connect", strerror(errno));
        if (s >= 0) close(s);
        return;
    }
    unsigned seed = (unsigned)now_ms() ^ (unsigned)getpid() ^ (unsigned)size;
    for (long i = 0; i < size; i++) { seed = seed * 1103515245u + 12345u; want[i] = seed >> 16; }
    ssize_t sent = connected ? send(s, want, size, 0)
                             : sendto(s, want, size, 0, (struct sockaddr *)&ss, sl);
    if (sent != size) {
        printf("%ld error sent:%zd:%s\n", size, sent, strerror(errno)); close(s); return;
    }
    long deadline = now_ms() + wait_ms;
    long left = deadline - now_ms();
    struct pollfd p = {s, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, (int)left) <= 0) { printf("%ld timeout\n", size); close(s); return; }
    struct sockaddr_storage from; socklen_t fl = sizeof from;
    memset(&from, 0, sizeof from);
    ssize_t n = recvfrom(s, buf, sizeof buf, MSG_TRUNC, (struct sockaddr *)&from, &fl);
    int err = errno;
    char src[INET6_ADDRSTRLEN + 16] = "";
    if (!connected && n >= 0) show(&from, src, sizeof src);
    if (n < 0 && err == ECONNREFUSED) printf("%ld refused\n", size);
    else if (n < 0) printf("%ld error recv:%s\n", size, strerror(err));
    else if (n != size) printf("%ld short %zd%s\n", size, n, src);
    else if (memcmp(buf, want, size) != 0) printf("%ld mismatch%s\n", size, src);
    else if (!connected && !same_peer(&from, &ss)) printf("%ld wrong-source%s\n", size, src);
    else printf("%ld ok%s\n", size, src);
    close(s);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]));
    int connected = argc >= 6 && strcmp(argv[1], "probe") == 0;
    if (connected || (argc >= 6 && strcmp(argv[1], "probe-unconnected") == 0)) {
        for (int i = 5; i < argc; i++)
            probe(argv[2], atoi(argv[3]), atoi(argv[4]), atol(argv[i]), connected);
        return 0;
    }
    fprintf(stderr, "usage: udpx serve PORT | "
                    "udpx probe|probe-unconnected ADDR PORT WAIT_MS SIZE...\n");
    return 2;
}
"#;

/// Compiles `udpx` (static, so it runs in the busybox image) into the engine's directory.
pub(crate) fn build(engine: &DockerEngine) -> PathBuf {
    let src = engine.dir.join("udpx.c");
    let bin = engine.dir.join("udpx");
    std::fs::write(&src, UDPX_C).expect("writing udpx.c");
    let out = Command::new("cc")
        .args(["-static", "-Os", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("running cc (a C compiler: the Rust toolchain's linker)");
    assert!(
        out.status.success(),
        "cc -static udpx.c failed (needs libc6-dev's libc.a):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The `docker run -v` argument that puts `udpx` at [`IN_CONTAINER`] in a container.
pub(crate) fn mount(udpx: &Path) -> String {
    format!("{}:{IN_CONTAINER}:ro", udpx.display())
}
