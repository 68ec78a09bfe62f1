//! Network namespaces for the chaos suite (the plumbing of `shared/tools/nat-lab.sh`): one
//! router namespace, and one namespace per "host" (the controller, each user), each joined to
//! the router by a veth pair on its own /24 of 10.B.0.0/16; the test's own namespace reaches
//! them through one more veth (10.B.0.1 ↔ router 10.B.0.2). Faults are nftables rules in the
//! router's forward chain: random loss (`numgen random mod 100 < N drop`) and partitions.
//!
//! Nothing is attached to a real interface, so no packet leaves the machine. [`Lab`] removes
//! every namespace, link and route it made when dropped, panics included, after killing
//! whatever still runs inside (deleting a namespace does not kill its processes).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static LABS: AtomicU32 = AtomicU32::new(0);

/// The namespaces of one run.
pub struct Lab {
    /// 10.B.0.0/16 is this lab's.
    b: u8,
    /// Host namespaces, index 0.. (router not included).
    hosts: Vec<String>,
    router: String,
    host_link: String,
    created: Vec<String>,
    route_added: bool,
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run_input(args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}\n{input}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// Why namespaces cannot be used here, or None when they can (root, `ip` and `nft`).
    pub fn unavailable() -> Option<String> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0");
        if !root {
            return Some("not running as root".into());
        }
        for tool in [["ip", "-V"], ["nft", "--version"]] {
            if run(&tool).is_err() {
                return Some(format!("`{}` is not installed", tool[0]));
            }
        }
        None
    }

    /// Removes the namespaces of earlier runs whose test process is gone (killed before its
    /// guards ran): `ovc{pid}x…` with no process `pid`.
    fn remove_stale() {
        let Ok(list) = run(&["ip", "netns", "list"]) else {
            return;
        };
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(pid) = ns
                .strip_prefix("ovc")
                .and_then(|rest| rest.split_once('x'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
                    for p in pids.split_whitespace() {
                        let _ = run(&["kill", "-9", p]);
                    }
                }
                let _ = run(&["ip", "netns", "del", ns]);
            }
        }
    }

    /// Creates the router and `hosts` host namespaces, joined as described above.
    pub fn create(hosts: usize) -> Result<Lab, String> {
        Lab::remove_stale();
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("ovc{}x{n}", std::process::id());
        // A 10.B.0.0/16 no route of this namespace uses yet.
        let routes = run(&["ip", "-4", "route", "show", "table", "all"])?;
        let start = (std::process::id() + n) % 50;
        let b = (0..50u32)
            .map(|k| ((start + k) % 50 + 200) as u8)
            .find(|b| !routes.contains(&format!("10.{b}.")))
            .ok_or("no free 10.B.0.0/16 for the lab")?;
        let mut lab = Lab {
            router: format!("{prefix}r"),
            hosts: (0..hosts).map(|i| format!("{prefix}h{i}")).collect(),
            host_link: format!("{prefix}t"),
            b,
            created: Vec::new(),
            route_added: false,
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), String> {
        let b = self.b;
        for ns in std::iter::once(self.router.clone()).chain(self.hosts.clone()) {
            run(&["ip", "netns", "add", &ns])?;
            self.created.push(ns.clone());
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        let r = self.router.clone();
        // The test's namespace ↔ router.
        run(&[
            "ip",
            "link",
            "add",
            &self.host_link,
            "type",
            "veth",
            "peer",
            "name",
            "t0",
            "netns",
            &r,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.{b}.0.1/24"),
            "dev",
            &self.host_link,
        ])?;
        run(&["ip", "link", "set", &self.host_link, "up"])?;
        run(&[
            "ip",
            "-n",
            &r,
            "addr",
            "add",
            &format!("10.{b}.0.2/24"),
            "dev",
            "t0",
        ])?;
        run(&["ip", "-n", &r, "link", "set", "t0", "up"])?;
        run(&[
            "ip",
            "route",
            "add",
            &format!("10.{b}.0.0/16"),
            "via",
            &format!("10.{b}.0.2"),
            "dev",
            &self.host_link,
        ])?;
        self.route_added = true;
        // Each host ↔ router: host side `eth0`, router side `h{i}`.
        for (i, ns) in self.hosts.clone().iter().enumerate() {
            let net = i + 1;
            let rif = format!("h{i}");
            run(&[
                "ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &rif,
                "netns", &r,
            ])?;
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.{b}.{net}.2/24"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            run(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.{b}.{net}.1"),
            ])?;
            run(&[
                "ip",
                "-n",
                &r,
                "addr",
                "add",
                &format!("10.{b}.{net}.1/24"),
                "dev",
                &rif,
            ])?;
            run(&["ip", "-n", &r, "link", "set", &rif, "up"])?;
        }
        run(&[
            "ip",
            "netns",
            "exec",
            &r,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        self.set_faults(&[])
    }

    /// Host `i`'s address.
    pub fn host_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.b, i as u8 + 1, 2)
    }

    /// The test's own address, reachable from every host.
    pub fn own_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.b, 0, 1)
    }

    /// The router's name for the link to host `i` (for rules).
    pub fn host_if(i: usize) -> String {
        format!("h{i}")
    }

    /// The command prefix that runs a program in host `i`'s namespace.
    pub fn exec_in(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.hosts[i].clone(),
        ]
    }

    /// Replaces the router's fault rules with `rules` (nft rule statements; empty: none).
    pub fn set_faults(&self, rules: &[String]) -> Result<(), String> {
        let mut script = String::from(
            "table ip chaos {\n  chain forward { type filter hook forward priority filter; policy accept; }\n}\nflush chain ip chaos forward\n",
        );
        for rule in rules {
            script.push_str(&format!("add rule ip chaos forward {rule}\n"));
        }
        run_input(
            &["ip", "netns", "exec", &self.router, "nft", "-f", "-"],
            &script,
        )
    }

    /// Puts host `home` behind a NAT on the router, as a home router does
    /// (`shared/tools/nat-lab.sh`): what it sends to the other hosts leaves with the router's
    /// address (masquerade), and nothing reaches it that it did not ask for (only packets of
    /// connections it opened), but from the test's own namespace (its user's browser, at
    /// home). The router forgets a connection idle for `idle_secs` (its conntrack timeout for
    /// established TCP, per namespace), so only traffic keeps a mapping open.
    pub fn put_behind_nat(&self, home: usize, idle_secs: u64) -> Result<(), String> {
        let b = self.b;
        let net = home + 1;
        let hif = Lab::host_if(home);
        let script = [
            "table ip natlab {".to_string(),
            "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;"
                .into(),
            format!("    ip saddr 10.{b}.{net}.0/24 oifname != \"t0\" masquerade"),
            "  }".into(),
            "  chain forward { type filter hook forward priority -10; policy accept;".into(),
            format!("    oifname \"{hif}\" iifname \"t0\" accept"),
            format!("    oifname \"{hif}\" ct state established,related accept"),
            format!("    oifname \"{hif}\" counter drop"),
            "  }".into(),
            "}".into(),
        ]
        .join("\n");
        run_input(
            &["ip", "netns", "exec", &self.router, "nft", "-f", "-"],
            &script,
        )?;
        for (key, value) in [
            (
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                idle_secs.to_string(),
            ),
            // A packet of a connection the router forgot is not taken up again mid-stream.
            ("net.netfilter.nf_conntrack_tcp_loose", "0".to_string()),
        ] {
            run(&[
                "ip",
                "netns",
                "exec",
                &self.router,
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ])?;
        }
        Ok(())
    }

    /// The router's own address on host `i`'s link (what a NATed host's packets come from).
    pub fn router_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.b, i as u8 + 1, 1)
    }

    /// Packets the current fault rules dropped so far (their `counter`s).
    pub fn dropped_packets(&self) -> u64 {
        let Ok(listing) = run(&[
            "ip",
            "netns",
            "exec",
            &self.router,
            "nft",
            "list",
            "chain",
            "ip",
            "chaos",
            "forward",
        ]) else {
            return 0;
        };
        let words: Vec<&str> = listing.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "packets")
            .filter_map(|w| w[1].parse::<u64>().ok())
            .sum()
    }

    /// Kills whatever still runs in the lab's namespaces.
    fn kill_leftovers(&self) {
        for ns in &self.created {
            if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
                for pid in pids.split_whitespace() {
                    let _ = run(&["kill", "-9", pid]);
                }
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_leftovers();
        if self.route_added {
            let _ = run(&[
                "ip",
                "route",
                "del",
                &format!("10.{}.0.0/16", self.b),
                "dev",
                &self.host_link,
            ]);
        }
        let _ = run(&["ip", "link", "del", &self.host_link]);
        for ns in self.created.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}
