//! A network namespace of the test's own, with two veth links to the host:
//! one its clients use, one it reaches etcd through. Cutting the etcd link
//! partitions the instance inside from etcd but not from its clients. Needs
//! root (`ip netns`); everything is deleted on drop, even after a failure.

use std::net::Ipv4Addr;
use std::process::Command;

/// The namespace and its two links.
pub struct Netns {
    pub name: String,
    /// Host side and namespace side of the clients' link.
    pub client_host: Ipv4Addr,
    pub client_ns: Ipv4Addr,
    /// Host side and namespace side of the etcd link.
    pub etcd_host: Ipv4Addr,
    pub etcd_ns: Ipv4Addr,
    etcd_link: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Whether this test process may make namespaces (root with `ip`).
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the partition test needs root (ip netns, veth links)".into());
    }
    ip(&["netns", "list"]).map_err(|e| format!("{e}: install iproute2"))
}

impl Netns {
    /// A fresh namespace; addresses in 10.213.0.0/16 and 10.214.0.0/16
    /// picked from the process id and a count of the namespaces this
    /// process made, so parallel runs, and tests of one binary running at
    /// once, do not collide.
    pub fn create() -> Result<Netns, String> {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8;
        let id = (std::process::id() % 1_000_000) * 8 + n;
        let (a, b) = (((id >> 8) % 250) as u8, ((id % 64) * 4) as u8);
        let ns = Netns {
            name: format!("mcpflip-t{id}"),
            client_host: Ipv4Addr::new(10, 213, a, b + 1),
            client_ns: Ipv4Addr::new(10, 213, a, b + 2),
            etcd_host: Ipv4Addr::new(10, 214, a, b + 1),
            etcd_ns: Ipv4Addr::new(10, 214, a, b + 2),
            etcd_link: format!("mfe{id}"),
        };
        let (hc, nc, he, ne) = (
            format!("mfc{id}"),
            format!("mfcn{id}"),
            ns.etcd_link.clone(),
            format!("mfen{id}"),
        );
        ip(&["netns", "add", &ns.name])?;
        for (host, inner, h, n) in [
            (&hc, &nc, ns.client_host, ns.client_ns),
            (&he, &ne, ns.etcd_host, ns.etcd_ns),
        ] {
            ip(&["link", "add", host, "type", "veth", "peer", "name", inner])?;
            ip(&["link", "set", inner, "netns", &ns.name])?;
            ip(&["addr", "add", &format!("{h}/30"), "dev", host])?;
            ip(&["link", "set", host, "up"])?;
            ip(&[
                "netns",
                "exec",
                &ns.name,
                "ip",
                "addr",
                "add",
                &format!("{n}/30"),
                "dev",
                inner,
            ])?;
            ip(&["netns", "exec", &ns.name, "ip", "link", "set", inner, "up"])?;
        }
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A file of the namespace's own under `/etc` (`hosts`, `resolv.conf`):
    /// `ip netns exec` mounts `/etc/netns/NAME/FILE` over `/etc/FILE` for
    /// the program it runs.
    pub fn etc_file(&self, file: &str, text: &str) {
        let dir = self.etc();
        std::fs::create_dir_all(&dir).expect("/etc/netns/NAME");
        std::fs::write(dir.join(file), text).expect("/etc/netns/NAME/FILE");
    }

    fn etc(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(&self.name)
    }

    /// Cuts (`false`) or restores (`true`) the etcd link.
    pub fn etcd_link(&self, up: bool) {
        ip(&[
            "link",
            "set",
            &self.etcd_link,
            if up { "up" } else { "down" },
        ])
        .expect("etcd link");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The namespace's ends go with it, and the host ends with their peers.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.etcd_link]);
        let _ = std::fs::remove_dir_all(self.etc());
    }
}
