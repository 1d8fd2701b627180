//! Canned Engine API 1.41 answers (Docker 20.10 shapes, trimmed to the fields that matter
//! plus some that do not, to show they are ignored).
use super::*;
use bollard::models::{ContainerInspectResponse, NetworkInspect};

const CLIENT3: &str = r#"{
  "Id": "9f3c2a1b7d4e5f60718293a4b5c6d7e8f9012345678901234567890abcdef01",
  "Created": "2024-05-02T10:11:12.123456789Z",
  "Path": "/sbin/docker-init",
  "Args": ["--", "sleep", "3600"],
  "State": {"Status": "running", "Running": true, "Paused": false, "Restarting": false,
            "OOMKilled": false, "Dead": false, "Pid": 41234, "ExitCode": 0, "Error": "",
            "StartedAt": "2024-05-02T10:11:12.5Z", "FinishedAt": "0001-01-01T00:00:00Z"},
  "Image": "sha256:0123",
  "Name": "/client3",
  "RestartCount": 0,
  "Driver": "overlay2",
  "HostConfig": {
    "NetworkMode": "default",
    "PortBindings": {},
    "Links": ["/nginx_server2:/client3/ng2", "/web1:/client3/webalias"],
    "Init": true
  },
  "Config": {
    "Hostname": "9f3c2a1b7d4e",
    "ExposedPorts": {"80/tcp": {}},
    "Env": ["PATH=/bin"],
    "Cmd": ["sleep", "3600"],
    "Image": "lab/busybox"
  },
  "NetworkSettings": {
    "Bridge": "",
    "SandboxID": "c0ffee",
    "HairpinMode": false,
    "Ports": {"80/tcp": null},
    "SandboxKey": "/var/run/docker/netns/c0ffee",
    "Gateway": "172.17.0.1",
    "IPAddress": "172.17.0.4",
    "IPPrefixLen": 16,
    "MacAddress": "02:42:ac:11:00:04",
    "Networks": {
      "bridge": {
        "IPAMConfig": null,
        "Links": null,
        "Aliases": null,
        "NetworkID": "5e1d6c0f0a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5",
        "EndpointID": "abc",
        "Gateway": "172.17.0.1",
        "IPAddress": "172.17.0.4",
        "IPPrefixLen": 16,
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "MacAddress": "02:42:ac:11:00:04",
        "DriverOpts": null
      }
    }
  }
}"#;

const PUBLISHED: &str = r#"{
  "Id": "1111",
  "Name": "/nginx_server1",
  "State": {"Status": "running", "Running": true, "Pid": 5150},
  "HostConfig": {
    "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                     "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}]},
    "Links": null
  },
  "Config": {"ExposedPorts": {"80/tcp": {}, "53/udp": {}, "443/tcp": {}}},
  "NetworkSettings": {
    "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}],
              "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
              "443/tcp": null},
    "Networks": {"bridge": {"NetworkID": "5e1d", "IPAddress": "172.17.0.2", "IPPrefixLen": 16,
                            "GlobalIPv6Address": "fd00::2", "MacAddress": "02:42:ac:11:00:02"}}
  }
}"#;

const STOPPED_ELSEWHERE: &str = r#"{
  "Id": "2222",
  "Name": "/other",
  "State": {"Status": "exited", "Running": false, "Pid": 0},
  "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": ""}]}},
  "Config": {},
  "NetworkSettings": {"Ports": {}, "Networks": {"mynet": {"NetworkID": "9999", "IPAddress": "", "MacAddress": ""}}}
}"#;

const DEFAULT_BRIDGE: &str = r#"{
  "Name": "bridge",
  "Id": "5e1d6c0f0a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5",
  "Created": "2024-05-02T10:00:00.000000000Z",
  "Scope": "local",
  "Driver": "bridge",
  "EnableIPv6": false,
  "IPAM": {"Driver": "default", "Options": null,
           "Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]},
  "Internal": false,
  "Attachable": false,
  "Ingress": false,
  "ConfigFrom": {"Network": ""},
  "ConfigOnly": false,
  "Containers": {},
  "Options": {
    "com.docker.network.bridge.default_bridge": "true",
    "com.docker.network.bridge.enable_icc": "false",
    "com.docker.network.bridge.enable_ip_masquerade": "true",
    "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
    "com.docker.network.bridge.name": "docker0",
    "com.docker.network.driver.mtu": "1500"
  },
  "Labels": {}
}"#;

fn container(json: &str) -> ContainerInspectResponse {
    serde_json::from_str(json).expect("canned inspect JSON parses")
}

#[test]
fn links_exposed_mac_ip_and_pid_of_a_linking_container() {
    let c = parse_container(&container(CLIENT3), "bridge", "")
        .unwrap()
        .expect("attached to bridge");
    assert_eq!(c.name, "client3");
    assert!(c.running);
    assert_eq!(c.pid, Some(41234));
    assert_eq!(c.ips, vec!["172.17.0.4".parse::<IpAddr>().unwrap()]);
    assert_eq!(c.mac, Some([0x02, 0x42, 0xac, 0x11, 0x00, 0x04]));
    assert_eq!(c.exposed, vec![PortProto { proto: 6, port: 80 }]);
    assert!(
        c.published.is_empty(),
        "a null binding is exposed, not published"
    );
    assert_eq!(
        c.links,
        vec![
            LinkSpec {
                child: "nginx_server2".into(),
                alias: "ng2".into()
            },
            LinkSpec {
                child: "web1".into(),
                alias: "webalias".into()
            },
        ]
    );
}

#[test]
fn published_ports_dedup_dual_stack_bindings_and_keep_protocols() {
    let c = parse_container(&container(PUBLISHED), "bridge", "")
        .unwrap()
        .unwrap();
    assert_eq!(
        c.published,
        vec![
            Published {
                proto: 6,
                container_port: 80,
                host_port: 8080
            },
            Published {
                proto: 17,
                container_port: 53,
                host_port: 5353
            },
        ]
    );
    assert_eq!(
        c.exposed,
        vec![
            PortProto { proto: 6, port: 80 },
            PortProto {
                proto: 6,
                port: 443
            },
            PortProto {
                proto: 17,
                port: 53
            },
        ]
    );
    assert_eq!(c.ips.len(), 2, "IPv4 and global IPv6");
    assert!(c.links.is_empty());
}

#[test]
fn a_container_on_another_network_is_not_ours() {
    assert_eq!(
        parse_container(&container(STOPPED_ELSEWHERE), "bridge", "5e1d").unwrap(),
        None
    );
    let c = parse_container(&container(STOPPED_ELSEWHERE), "x", "9999")
        .unwrap()
        .expect("matched by network id");
    assert!(!c.running);
    assert_eq!(c.pid, None, "Pid 0 means no process");
    assert!(c.ips.is_empty() && c.mac.is_none());
    assert!(
        c.published.is_empty(),
        "an empty HostPort is not a binding yet"
    );
}

#[test]
fn bad_fields_are_named_in_the_error() {
    let bad = CLIENT3.replace("/nginx_server2:/client3/ng2", "nginx_server2");
    let e = parse_container(&container(&bad), "bridge", "").unwrap_err();
    assert_eq!(e.field, "HostConfig.Links");
    assert!(e.to_string().contains("container client3"), "{e}");

    let bad = CLIENT3.replace("\"80/tcp\": {}", "\"80/xyz\": {}");
    let e = parse_container(&container(&bad), "bridge", "").unwrap_err();
    assert_eq!(e.field, "Config.ExposedPorts");
}

#[test]
fn default_bridge_network_options() {
    let net: NetworkInspect = serde_json::from_str(DEFAULT_BRIDGE).unwrap();
    let f = parse_network(&net).unwrap();
    assert_eq!(f.bridge, "docker0");
    assert!(!f.icc);
    assert_eq!(f.gateways, vec!["172.17.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(f.name, "bridge");

    let icc_absent = DEFAULT_BRIDGE.replace("com.docker.network.bridge.enable_icc", "x");
    let f = parse_network(&serde_json::from_str(&icc_absent).unwrap()).unwrap();
    assert!(f.icc, "Docker's default is icc on");

    let user_net = DEFAULT_BRIDGE.replace("com.docker.network.bridge.name", "y");
    let f = parse_network(&serde_json::from_str(&user_net).unwrap()).unwrap();
    assert_eq!(f.bridge, "br-5e1d6c0f0a2b");

    let bad = DEFAULT_BRIDGE.replace("\"false\"", "\"maybe\"");
    assert!(parse_network(&serde_json::from_str(&bad).unwrap()).is_err());
}

#[test]
fn user_defined_network_facts() {
    // A Compose-style network: no bridge-name option, an IPv6 subnet beside the IPv4 one,
    // --internal, not the default bridge.
    let user = DEFAULT_BRIDGE
        .replace("\"Name\": \"bridge\"", "\"Name\": \"myapp_default\"")
        .replace("com.docker.network.bridge.name", "y")
        .replace("com.docker.network.bridge.default_bridge", "z")
        .replace("\"Internal\": false", "\"Internal\": true")
        .replace(
            r#"[{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]"#,
            r#"[{"Subnet": "172.20.0.0/16", "Gateway": "172.20.0.1"},
                {"Subnet": "fd00:20::/64", "Gateway": "fd00:20::1"}]"#,
        );
    let f = parse_network(&serde_json::from_str(&user).unwrap()).unwrap();
    assert_eq!(f.name, "myapp_default");
    assert_eq!(f.bridge, "br-5e1d6c0f0a2b");
    assert_eq!(f.driver, "bridge");
    assert!(f.internal && !f.default_bridge);
    let subnets: Vec<String> = f.subnets.iter().map(|c| c.to_string()).collect();
    assert_eq!(subnets, vec!["172.20.0.0/16", "fd00:20::/64"]);
    assert_eq!(f.gateways.len(), 2);

    let f = parse_network(&serde_json::from_str(DEFAULT_BRIDGE).unwrap()).unwrap();
    assert!(f.default_bridge && !f.internal);

    let bad = DEFAULT_BRIDGE.replace("172.17.0.0/16", "172.17.0.0/99");
    let e = parse_network(&serde_json::from_str(&bad).unwrap()).unwrap_err();
    assert_eq!(e.field, "IPAM.Config.Subnet");
}

#[test]
fn small_parsers() {
    assert_eq!(
        parse_port_proto("8080"),
        Some(PortProto {
            proto: 6,
            port: 8080
        })
    );
    assert_eq!(
        parse_port_proto("9/sctp"),
        Some(PortProto {
            proto: 132,
            port: 9
        })
    );
    assert_eq!(parse_port_proto("70000/tcp"), None);
    assert_eq!(parse_mac("02:42:ac:11:00"), None);
    assert_eq!(parse_mac("02:42:ac:11:00:02:03"), None);
    assert_eq!(
        parse_link("/a:/b/c"),
        Some(LinkSpec {
            child: "a".into(),
            alias: "c".into()
        })
    );
    assert_eq!(parse_link("/a:b"), None);
}
