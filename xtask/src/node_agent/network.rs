//! Pod networking: a host bridge plus one network namespace and veth pair per pod,
//! driven through iproute2. Pods get no default route, so they can reach only the
//! pod CIDR (other pods and the host's bridge address), never any other address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Stdio;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("`ip {args}` failed: {stderr}")]
    IpCommand { args: String, stderr: String },
    #[error("cannot run `ip` (iproute2): {0}")]
    Spawn(std::io::Error),
    #[error("pod CIDR {cidr} overlaps {what} on this machine; pick another with --pod-cidr")]
    Overlap { cidr: Ipv4Cidr, what: String },
    #[error("pod CIDR {0} has no free address left")]
    Exhausted(Ipv4Cidr),
    #[error("invalid CIDR '{0}'")]
    InvalidCidr(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || NetworkError::InvalidCidr(s.to_string());
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if prefix > 32 {
            return Err(invalid());
        }
        Ok(Self { addr, prefix })
    }
}

impl Ipv4Cidr {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    pub fn network(&self) -> u32 {
        u32::from(self.addr) & self.mask()
    }
    pub fn broadcast(&self) -> u32 {
        self.network() | !self.mask()
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.network()
    }
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.network() <= other.broadcast() && other.network() <= self.broadcast()
    }
}

/// Hands out pod addresses from a range of the pod CIDR.
#[derive(Debug)]
pub struct IpAllocator {
    first: u32,
    last: u32,
    cidr: Ipv4Cidr,
    used: BTreeSet<u32>,
}

impl IpAllocator {
    /// Allocates from `first..=last` (inclusive host addresses of `cidr`).
    pub fn new(cidr: Ipv4Cidr, first: Ipv4Addr, last: Ipv4Addr) -> Self {
        Self {
            first: u32::from(first),
            last: u32::from(last),
            cidr,
            used: BTreeSet::new(),
        }
    }

    /// Takes `preferred` when it is in range and free (a pod keeps its IP across an
    /// agent restart), else the lowest free address.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Result<Ipv4Addr, NetworkError> {
        if let Some(ip) = preferred.map(u32::from) {
            if (self.first..=self.last).contains(&ip) && self.used.insert(ip) {
                return Ok(Ipv4Addr::from(ip));
            }
        }
        let free = (self.first..=self.last)
            .find(|ip| !self.used.contains(ip))
            .ok_or(NetworkError::Exhausted(self.cidr))?;
        self.used.insert(free);
        Ok(Ipv4Addr::from(free))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }
}

/// Runs `ip <args>` and returns stdout.
pub async fn ip(args: &[&str]) -> Result<String, NetworkError> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(NetworkError::Spawn)?;
    if !output.status.success() {
        return Err(NetworkError::IpCommand {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Refuses a pod CIDR that overlaps any IPv4 address or route on the machine,
/// except those on our own bridge (left over from an earlier run).
pub async fn check_no_overlap(cidr: Ipv4Cidr, bridge: &str) -> Result<(), NetworkError> {
    let addrs = ip(&["-o", "-4", "addr", "show"]).await?;
    for line in addrs.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let dev = words.get(1).copied().unwrap_or_default();
        if dev == bridge {
            continue;
        }
        if let Some(pos) = words.iter().position(|w| *w == "inet") {
            if let Some(Ok(addr)) = words.get(pos + 1).map(|w| w.parse::<Ipv4Cidr>()) {
                if addr.overlaps(&cidr) {
                    return Err(NetworkError::Overlap {
                        cidr,
                        what: format!("address {addr} on {dev}"),
                    });
                }
            }
        }
    }
    let routes = ip(&["-4", "route", "show", "table", "all"]).await?;
    for line in routes.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let dev = words
            .iter()
            .position(|w| *w == "dev")
            .and_then(|i| words.get(i + 1))
            .copied()
            .unwrap_or_default();
        if dev == bridge {
            continue;
        }
        // Skip route-type keywords such as `local` or `broadcast`.
        let dest = words
            .iter()
            .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()));
        if let Some(Ok(route)) = dest.map(|w| w.parse::<Ipv4Cidr>()) {
            if route.prefix > 0 && route.overlaps(&cidr) {
                return Err(NetworkError::Overlap {
                    cidr,
                    what: format!("route `{}`", line.trim()),
                });
            }
        }
    }
    Ok(())
}

/// Creates the host bridge with the gateway address if it is missing.
pub async fn ensure_bridge(
    bridge: &str,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetworkError> {
    if ip(&["link", "show", bridge]).await.is_err() {
        ip(&["link", "add", bridge, "type", "bridge"]).await?;
    }
    let addr = format!("{gateway}/{prefix}");
    let current = ip(&["-o", "-4", "addr", "show", "dev", bridge]).await?;
    if !current.contains(&format!("inet {addr} ")) {
        ip(&["addr", "add", &addr, "dev", bridge]).await?;
    }
    ip(&["link", "set", bridge, "up"]).await?;
    Ok(())
}

pub async fn delete_bridge(bridge: &str) -> Result<(), NetworkError> {
    if ip(&["link", "show", bridge]).await.is_ok() {
        ip(&["link", "del", bridge]).await?;
    }
    Ok(())
}

/// Names derived from a pod UID; the host veth name must fit in 15 characters.
#[derive(Debug, Clone)]
pub struct PodNetNames {
    pub netns: String,
    pub host_veth: String,
}

impl PodNetNames {
    pub fn for_uid(prefix: &str, uid: &str) -> Self {
        let short: String = uid.chars().filter(|c| *c != '-').take(10).collect();
        Self {
            netns: format!("{prefix}{short}"),
            host_veth: format!("sv{short}"),
        }
    }
}

/// Creates the pod's namespace with `eth0` at `pod_ip` on the bridge, and `lo` up.
pub async fn setup_pod_netns(
    names: &PodNetNames,
    bridge: &str,
    pod_ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetworkError> {
    // Start clean so a half-made namespace from a crash never blocks a pod.
    teardown_pod_netns(names).await;
    let peer = format!("{}p", names.host_veth.chars().take(14).collect::<String>());
    ip(&["netns", "add", &names.netns]).await?;
    ip(&[
        "link",
        "add",
        &names.host_veth,
        "type",
        "veth",
        "peer",
        "name",
        &peer,
    ])
    .await?;
    ip(&["link", "set", &peer, "netns", &names.netns]).await?;
    ip(&["-n", &names.netns, "link", "set", &peer, "name", "eth0"]).await?;
    // A MAC derived from the IP: a new pod that reuses a freed IP keeps its MAC, so the
    // neighbour caches of the host and of other pods stay right (a random MAC left the
    // IP unreachable until those entries expired, 10-50 s).
    let [a, b, c, d] = pod_ip.octets();
    let mac = format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}");
    ip(&["-n", &names.netns, "link", "set", "eth0", "address", &mac]).await?;
    let addr = format!("{pod_ip}/{prefix}");
    ip(&["-n", &names.netns, "addr", "add", &addr, "dev", "eth0"]).await?;
    ip(&["-n", &names.netns, "link", "set", "eth0", "up"]).await?;
    ip(&["-n", &names.netns, "link", "set", "lo", "up"]).await?;
    ip(&["link", "set", &names.host_veth, "master", bridge]).await?;
    ip(&["link", "set", &names.host_veth, "up"]).await?;
    Ok(())
}

/// Removes the namespace (which also removes its veth pair); missing parts are fine.
pub async fn teardown_pod_netns(names: &PodNetNames) {
    let _ = ip(&["netns", "del", &names.netns]).await;
    let _ = ip(&["link", "del", &names.host_veth]).await;
}

/// Namespaces whose name starts with `prefix` (left over from an earlier run).
pub async fn list_netns(prefix: &str) -> Result<Vec<String>, NetworkError> {
    let out = ip(&["netns", "list"]).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

/// PIDs of processes inside a namespace.
pub async fn netns_pids(netns: &str) -> Vec<i32> {
    ip(&["netns", "pids", netns])
        .await
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("valid cidr")
    }

    #[test]
    fn detects_overlaps() {
        let pods = cidr("10.244.0.0/16");
        assert!(!pods.overlaps(&cidr("192.0.2.2/24")));
        assert!(pods.overlaps(&cidr("10.0.0.0/8")));
        assert!(pods.overlaps(&cidr("10.244.3.7/32")));
        assert!(!pods.overlaps(&cidr("10.245.0.0/16")));
        assert!(!pods.overlaps(&cidr("127.0.0.1/8")));
        assert!(pods.contains("10.244.255.254".parse().expect("ip")));
    }

    #[test]
    fn rejects_bad_cidrs() {
        assert!("10.244.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.244.0/16".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn allocator_prefers_previous_ip_and_reuses_released() {
        let mut alloc = IpAllocator::new(
            cidr("10.244.0.0/16"),
            "10.244.0.2".parse().expect("ip"),
            "10.244.0.4".parse().expect("ip"),
        );
        let kept = alloc
            .allocate(Some("10.244.0.3".parse().expect("ip")))
            .expect("free");
        assert_eq!(kept.to_string(), "10.244.0.3");
        assert_eq!(
            alloc.allocate(None).expect("free").to_string(),
            "10.244.0.2"
        );
        assert_eq!(
            alloc.allocate(Some(kept)).expect("free").to_string(),
            "10.244.0.4"
        );
        assert!(alloc.allocate(None).is_err());
        alloc.release(kept);
        assert_eq!(alloc.allocate(None).expect("free"), kept);
    }

    #[test]
    fn veth_names_fit_the_kernel_limit() {
        let names = PodNetNames::for_uid("sluice-", "0b5f6a1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b");
        assert!(names.host_veth.len() <= 15);
        assert_eq!(names.netns, "sluice-0b5f6a1e2c");
    }
}
