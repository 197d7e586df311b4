//! A pod network as a CNI plugin leaves it, made with iproute2 for a test:
//! namespace "pod" with `eth0` (198.18.0.2/24, default route via
//! 198.18.0.1) and namespace "peer" with `peer0` (198.18.0.1/24), the two
//! ends of one veth. Names are unique per process and test; dropping the
//! pair deletes both namespaces, which deletes everything in them.

#![allow(dead_code)] // each test binary uses part of this

use std::path::{Path, PathBuf};
use std::process::Command;

/// True when this process can make network namespaces; otherwise says why not.
pub fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {test}: network namespaces, veths and taps need root");
        return false;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIP {test}: needs iproute2's ip and tc (apt-get install iproute2)");
        return false;
    }
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP {test}: /dev/net/tun is missing");
        return false;
    }
    true
}

pub struct NetnsPair {
    pub pod_name: String,
    pub peer_name: String,
    pod_alive: bool,
}

impl NetnsPair {
    /// None (after saying why) when this machine cannot run the test.
    pub fn new(test: &str) -> Option<NetnsPair> {
        if !can_run(test) {
            return None;
        }
        let base = format!("husk-{}-{test}", std::process::id());
        let pair = NetnsPair {
            pod_name: format!("{base}-pod"),
            peer_name: format!("{base}-peer"),
            pod_alive: true,
        };
        // Leftovers of an earlier run with the same pid would make `add` fail.
        for ns in [&pair.pod_name, &pair.peer_name] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            pair.run("ip", &["netns", "add", ns]);
        }
        pair.pod(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "peer0",
            "netns",
            &pair.peer_name,
        ]);
        pair.pod(&["addr", "add", "198.18.0.2/24", "dev", "eth0"]);
        pair.pod(&["link", "set", "eth0", "up"]);
        pair.pod(&["link", "set", "lo", "up"]);
        pair.pod(&["route", "add", "default", "via", "198.18.0.1"]);
        pair.peer(&["addr", "add", "198.18.0.1/24", "dev", "peer0"]);
        pair.peer(&["link", "set", "peer0", "up"]);
        pair.peer(&["link", "set", "lo", "up"]);
        Some(pair)
    }

    pub fn pod_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.pod_name)
    }

    pub fn peer_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.peer_name)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n <pod> ARGS`.
    pub fn pod(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.pod_name];
        all.extend_from_slice(args);
        self.run("ip", &all)
    }

    /// `ip -n <peer> ARGS`.
    pub fn peer(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.peer_name];
        all.extend_from_slice(args);
        self.run("ip", &all)
    }

    /// `ip -j -n <pod> ARGS`, parsed.
    pub fn pod_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.pod(&all)).expect("ip -j prints JSON")
    }

    /// `tc -n <pod> ARGS`.
    pub fn tc(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.pod_name];
        all.extend_from_slice(args);
        self.run("tc", &all)
    }

    pub fn pod_has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.pod_name, "link", "show", name])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The devices of the pod namespace that have an ingress qdisc.
    pub fn ingress_qdiscs(&self) -> Vec<String> {
        let out = self.run("tc", &["-j", "-n", &self.pod_name, "qdisc", "show"]);
        let qdiscs: serde_json::Value = serde_json::from_str(&out).expect("tc -j prints JSON");
        qdiscs
            .as_array()
            .unwrap()
            .iter()
            .filter(|q| q["kind"] == "ingress")
            .map(|q| q["dev"].as_str().unwrap().to_string())
            .collect()
    }

    fn mac(&self, ip_args: Vec<&str>) -> String {
        let mut all = vec!["-j"];
        all.extend(ip_args);
        let out = self.run("ip", &all);
        let links: serde_json::Value = serde_json::from_str(&out).unwrap();
        links[0]["address"].as_str().unwrap().to_string()
    }

    pub fn pod_mac(&self) -> String {
        self.mac(vec!["-n", &self.pod_name, "link", "show", "eth0"])
    }

    pub fn peer_mac(&self) -> String {
        self.mac(vec!["-n", &self.peer_name, "link", "show", "peer0"])
    }

    /// Deletes the pod namespace now (as CNI DEL + the CRI would).
    pub fn delete_pod(&mut self) {
        self.run("ip", &["netns", "del", &self.pod_name]);
        self.pod_alive = false;
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let mut names = vec![&self.peer_name];
        if self.pod_alive {
            names.push(&self.pod_name);
        }
        for ns in names {
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            if !out.is_ok_and(|o| o.status.success()) {
                eprintln!("could not delete network namespace {ns}");
            }
        }
    }
}
