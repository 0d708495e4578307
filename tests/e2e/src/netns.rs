//! Home networks in network namespaces: a "public" segment (a bridge in the test's own
//! namespace) with the control plane and relay in their own namespace, and behind each of two
//! routers (MASQUERADE, unsolicited inbound dropped, as home routers do) one host. Names carry
//! a per-run tag; everything is removed on drop.

use std::process::Command;

use std::sync::atomic::{AtomicU8, Ordering};

/// Topologies made by this process so far (each gets its own public subnet and names).
static MADE: AtomicU8 = AtomicU8::new(0);

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn in_ns(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Connect namespace `ns` to `bridge` with a veth pair (`outer` on the bridge, `inner` in
/// `ns` with `address`), and bring up `ns`'s loopback.
fn plug(bridge: &str, outer: &str, inner: &str, ns: &str, address: &str) -> Result<(), String> {
    run(&[
        "ip", "link", "add", outer, "type", "veth", "peer", "name", inner,
    ])?;
    run(&["ip", "link", "set", outer, "master", bridge, "up"])?;
    run(&["ip", "link", "set", inner, "netns", ns])?;
    in_ns(ns, &["ip", "addr", "add", address, "dev", inner])?;
    in_ns(ns, &["ip", "link", "set", inner, "up"])?;
    in_ns(ns, &["ip", "link", "set", "lo", "up"])
}

/// How the routers translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping (Linux MASQUERADE keeps the source port): hole punching
    /// works.
    Cone,
    /// A fresh random port per destination (`--random-fully`): hole punching cannot work and
    /// traffic stays relayed.
    Symmetric,
}

/// The namespaces of one NAT test.
pub struct Topology {
    tag: String,
    /// The public segment, `198.18.<n>.0/24`; the test's namespace is `.254`.
    pub public_net: String,
    /// The control plane's and relay's address in the public segment.
    pub public_server: String,
    /// Namespace of the control plane and relay.
    pub public: String,
    /// Namespaces of the hosts, one per home network.
    pub homes: Vec<String>,
    routers: Vec<String>,
    bridge: String,
}

impl Topology {
    /// Build it; fails when the process may not create namespaces (not root, no iproute2 or
    /// iptables).
    pub fn create(homes: usize, nat: NatKind) -> Result<Topology, String> {
        let n = MADE.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{:x}{n:x}", std::process::id() % 0xfff);
        let public_net = format!("198.18.{}", (std::process::id() % 200) as u8 + n);
        let mut topo = Topology {
            public_server: format!("{public_net}.1"),
            public_net,
            public: format!("mpub{tag}"),
            homes: Vec::new(),
            routers: Vec::new(),
            bridge: format!("mbr{tag}"),
            tag: tag.clone(),
        };
        topo.build(homes, nat).inspect_err(|_| topo.remove())?;
        Ok(topo)
    }

    fn build(&mut self, homes: usize, nat: NatKind) -> Result<(), String> {
        let t = &self.tag.clone();
        let bridge = self.bridge.clone();
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}.254/24", self.public_net),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        // The public namespace: control plane and relay.
        let public = self.public.clone();
        run(&["ip", "netns", "add", &public])?;
        let address = format!("{}/24", self.public_server);
        plug(
            &bridge,
            &format!("mpo{t}"),
            &format!("mpi{t}"),
            &public,
            &address,
        )?;
        for i in 1..=homes {
            let router = format!("mr{i}{t}");
            let home = format!("mh{i}{t}");
            self.routers.push(router.clone());
            self.homes.push(home.clone());
            run(&["ip", "netns", "add", &router])?;
            run(&["ip", "netns", "add", &home])?;
            // Router's WAN side on the public bridge.
            let wi = format!("mw{i}i{t}");
            let address = format!("{}.{}/24", self.public_net, 10 + i);
            plug(&bridge, &format!("mw{i}o{t}"), &wi, &router, &address)?;
            // LAN between router and host.
            let (lr, lh) = (format!("ml{i}r{t}"), format!("ml{i}h{t}"));
            run(&[
                "ip", "link", "add", &lr, "type", "veth", "peer", "name", &lh,
            ])?;
            run(&["ip", "link", "set", &lr, "netns", &router])?;
            run(&["ip", "link", "set", &lh, "netns", &home])?;
            in_ns(
                &router,
                &["ip", "addr", "add", &format!("10.{i}.0.1/24"), "dev", &lr],
            )?;
            in_ns(&router, &["ip", "link", "set", &lr, "up"])?;
            in_ns(
                &home,
                &["ip", "addr", "add", &format!("10.{i}.0.2/24"), "dev", &lh],
            )?;
            in_ns(&home, &["ip", "link", "set", &lh, "up"])?;
            in_ns(&home, &["ip", "link", "set", "lo", "up"])?;
            in_ns(
                &home,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.{i}.0.1"),
                ],
            )?;
            // The router: forward, masquerade, and drop what nobody inside asked for.
            in_ns(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            let mut masquerade = vec![
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                &wi,
                "-j",
                "MASQUERADE",
            ];
            if nat == NatKind::Symmetric {
                masquerade.push("--random-fully");
            }
            in_ns(&router, &masquerade)?;
            in_ns(
                &router,
                &[
                    "iptables",
                    "-A",
                    "FORWARD",
                    "-i",
                    &wi,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            )?;
            in_ns(
                &router,
                &["iptables", "-A", "FORWARD", "-i", &wi, "-j", "DROP"],
            )?;
            in_ns(
                &router,
                &[
                    "iptables",
                    "-A",
                    "INPUT",
                    "-i",
                    &wi,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            )?;
            in_ns(
                &router,
                &["iptables", "-A", "INPUT", "-i", &wi, "-j", "DROP"],
            )?;
        }
        Ok(())
    }

    /// `ip netns exec <ns>` prefix for a command.
    pub fn exec_prefix(ns: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), ns.into()]
    }

    fn remove(&self) {
        for ns in self.homes.iter().chain(&self.routers).chain([&self.public]) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
        // veth ends left in this namespace go with their peers; remove any stragglers.
        for prefix in ["mpo", "mw1o", "mw2o", "mw3o"] {
            let _ = run(&["ip", "link", "del", &format!("{prefix}{}", self.tag)]);
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}
