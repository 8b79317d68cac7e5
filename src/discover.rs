//! Finding the other devices on the local network that serve their store for
//! sync, over multicast DNS (DNS-SD, RFC 6762 and 6763), so that two devices
//! in one room can exchange entries ([`crate::exchange`]) without a replica
//! or a typed address.
//!
//! A device that serves its store calls [`advertise`] with its stable node
//! name and the port it serves on; the announcement lasts as long as the
//! returned [`Advertisement`], and dropping it says goodbye. A device that
//! looks for peers calls [`browse`], which listens for a while and returns
//! each other device once, with the addresses to reach it at.
//!
//! What is announced: an instance of [`SERVICE_TYPE`] named after the node,
//! with the node name again in the TXT property [`NODE_PROPERTY`] (instance
//! names may be renamed by mDNS conflict resolution; the property is not), on
//! every non-loopback interface, with every address of those interfaces. No
//! key, namespace or other secret is announced: the node name and the port
//! are all a listener learns.
//!
//! Each call runs its own mDNS daemon (a thread of `mdns-sd`) and stops it
//! when done; browsing awaits that daemon's channel and never blocks the
//! async executor. What a network may send is bounded: at most
//! [`MAX_DEVICES`] devices with [`MAX_ADDRESSES`] addresses each are kept,
//! and records without a valid node name, port or usable address are ignored.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use mdns_sd::{IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};

/// The DNS-SD service type a device that serves its store for sync announces.
pub const SERVICE_TYPE: &str = "_mindoo-sync._tcp.local.";

/// The TXT property that carries the device's node name.
pub const NODE_PROPERTY: &str = "node";

/// Devices one [`browse`] keeps at most; more are ignored.
pub const MAX_DEVICES: usize = 256;

/// Addresses kept per device at most (the preferred ones).
pub const MAX_ADDRESSES: usize = 16;

/// The longest node name, in bytes: one DNS label.
pub const MAX_NODE_LEN: usize = 63;

/// How long stopping waits for the mDNS daemon to confirm each step.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest service name (the part between `_` and `._tcp`), RFC 6763 7.2.
const MAX_SERVICE_NAME_LEN: usize = 15;

/// Why announcing or browsing failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("node name {node:?} cannot be announced: {why}")]
    InvalidNode { node: String, why: &'static str },
    #[error("port 0 cannot be announced")]
    InvalidPort,
    #[error(
        "{0:?} is not a DNS-SD service type such as \"_name._tcp.local.\" (name of 1 to 15 bytes)"
    )]
    InvalidServiceType(String),
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
    #[error("the mDNS daemon stopped before the browse ended")]
    DaemonStopped,
}

/// A device found by [`browse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The device's node name, from its TXT property.
    pub node: String,
    /// Where it serves its store: IPv4 first, then IPv6 (link-local ones
    /// with their interface as scope), each group in address order.
    pub addresses: Vec<SocketAddr>,
}

/// This device announced on the local network. Dropping it (or [`stop`])
/// unregisters the service, which sends the goodbye that makes browsers
/// forget it at once, and shuts the mDNS daemon down. Either blocks the
/// calling thread until the daemon confirms each step: at once normally, at
/// most about two seconds if it is wedged.
///
/// [`stop`]: Advertisement::stop
pub struct Advertisement {
    daemon: Option<ServiceDaemon>,
    fullname: String,
    node: String,
    port: u16,
}

impl fmt::Debug for Advertisement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Advertisement")
            .field("fullname", &self.fullname)
            .field("node", &self.node)
            .field("port", &self.port)
            .field("running", &self.daemon.is_some())
            .finish()
    }
}

impl Advertisement {
    /// The node name announced.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The port announced.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The DNS-SD instance name registered, e.g. `laptop._mindoo-sync._tcp.local.`.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Says goodbye and stops the daemon, as dropping does, but reports a
    /// failure.
    pub fn stop(mut self) -> Result<(), DiscoverError> {
        self.stop_daemon()
    }

    fn stop_daemon(&mut self) -> Result<(), DiscoverError> {
        let Some(daemon) = self.daemon.take() else {
            return Ok(());
        };
        // The goodbye goes out while the daemon handles the command; the
        // answer says it has.
        let unregistered = daemon.unregister(&self.fullname).map(|status| {
            let _ = status.recv_timeout(STOP_TIMEOUT);
        });
        let stopped = daemon.shutdown().map(|status| {
            let _ = status.recv_timeout(STOP_TIMEOUT);
        });
        unregistered?;
        stopped?;
        Ok(())
    }
}

impl Drop for Advertisement {
    fn drop(&mut self) {
        if let Err(e) = self.stop_daemon() {
            let node = &self.node;
            tracing::debug!(error = %e, node, "mDNS advertisement did not stop cleanly");
        }
    }
}

/// Announces that this device serves its store for sync on `port`, as
/// `node` (its stable node name), on every non-loopback interface, until the
/// returned [`Advertisement`] is dropped. Addresses that interfaces gain or
/// lose later are announced as they change.
pub fn advertise(node: &str, port: u16) -> Result<Advertisement, DiscoverError> {
    advertise_service(SERVICE_TYPE, node, port)
}

/// [`advertise`] under another service type, e.g. to keep tests apart from
/// real devices.
pub fn advertise_service(
    service_type: &str,
    node: &str,
    port: u16,
) -> Result<Advertisement, DiscoverError> {
    check_service_type(service_type)?;
    check_node(node)?;
    if port == 0 {
        return Err(DiscoverError::InvalidPort);
    }
    let host = format!("{}.local.", host_label(node));
    let properties = [(NODE_PROPERTY, node)];
    // No addresses given: with addr_auto the daemon fills in those of the
    // interfaces it uses, and follows them as they change.
    let info =
        ServiceInfo::new(service_type, node, &host, "", port, &properties[..])?.enable_addr_auto();
    let fullname = info.get_fullname().to_string();
    let daemon = ServiceDaemon::new()?;
    let advertisement = Advertisement {
        daemon: Some(daemon.clone()),
        fullname,
        node: node.to_string(),
        port,
    };
    // Commands run in order, so the register below already sees loopback
    // disabled. On an error the advertisement's drop stops the daemon.
    daemon.disable_interface(loopback())?;
    daemon.register(info)?;
    Ok(advertisement)
}

/// Listens on the local network for `wait` and returns every device that
/// announced [`SERVICE_TYPE`] meanwhile, once each (by node name), sorted by
/// node name, without `except_node` (this device's own name). A device that
/// said goodbye during the wait is left out.
pub async fn browse(
    wait: Duration,
    except_node: Option<&str>,
) -> Result<Vec<Found>, DiscoverError> {
    browse_service(SERVICE_TYPE, wait, except_node).await
}

/// [`browse`] for another service type.
pub async fn browse_service(
    service_type: &str,
    wait: Duration,
    except_node: Option<&str>,
) -> Result<Vec<Found>, DiscoverError> {
    check_service_type(service_type)?;
    let daemon = StopOnDrop(Some(ServiceDaemon::new()?));
    let mdns = daemon.get();
    mdns.disable_interface(loopback())?;
    let events = mdns.browse(service_type)?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Seen::new(except_node, MAX_DEVICES);
    loop {
        let event = match tokio::time::timeout_at(deadline, events.recv_async()).await {
            Err(_elapsed) => break,
            Ok(Err(_disconnected)) => return Err(DiscoverError::DaemonStopped),
            Ok(Ok(event)) => event,
        };
        match event {
            ServiceEvent::ServiceResolved(service) => seen.resolved(&service),
            ServiceEvent::ServiceRemoved(_, fullname) => seen.removed(&fullname),
            _ => {}
        }
    }
    daemon.stop().await;
    Ok(seen.into_found())
}

/// Shuts a browsing daemon down, also when the browse future is dropped.
struct StopOnDrop(Option<ServiceDaemon>);

impl StopOnDrop {
    fn get(&self) -> &ServiceDaemon {
        self.0.as_ref().expect("running until stopped")
    }

    async fn stop(mut self) {
        if let Some(daemon) = self.0.take()
            && let Ok(status) = daemon.shutdown()
        {
            let _ = tokio::time::timeout(STOP_TIMEOUT, status.recv_async()).await;
        }
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(daemon) = self.0.take() {
            let _ = daemon.shutdown();
        }
    }
}

fn loopback() -> Vec<IfKind> {
    vec![IfKind::LoopbackV4, IfKind::LoopbackV6]
}

/// What a browse has seen so far: at most `cap` devices, by node name.
struct Seen<'a> {
    except: Option<&'a str>,
    cap: usize,
    devices: BTreeMap<String, Vec<SocketAddr>>,
    /// Instance full name (lower case) -> node, for goodbyes.
    instances: HashMap<String, String>,
}

impl<'a> Seen<'a> {
    fn new(except: Option<&'a str>, cap: usize) -> Self {
        Self {
            except,
            cap,
            devices: BTreeMap::new(),
            instances: HashMap::new(),
        }
    }

    fn resolved(&mut self, service: &ResolvedService) {
        let node = service.get_property_val(NODE_PROPERTY).flatten();
        let addresses = service.get_addresses().iter().filter_map(scoped);
        match device(node, service.get_port(), addresses) {
            Some((node, addresses)) => self.add(service.get_fullname(), node, addresses),
            None => tracing::debug!(
                instance = service.get_fullname(),
                "mDNS: ignored a record without a valid node name, port or usable address"
            ),
        }
    }

    fn add(&mut self, fullname: &str, node: String, addresses: Vec<SocketAddr>) {
        if self.except == Some(node.as_str()) {
            return;
        }
        if let Some(known) = self.devices.get_mut(&node) {
            known.extend(addresses);
            *known = ordered(std::mem::take(known));
        } else if self.devices.len() < self.cap {
            self.devices.insert(node.clone(), addresses);
        } else {
            tracing::debug!(node, cap = self.cap, "mDNS: too many devices, ignored one");
            return;
        }
        if self.instances.len() < self.cap * 4 {
            self.instances.insert(fullname.to_lowercase(), node);
        }
    }

    fn removed(&mut self, fullname: &str) {
        let Some(node) = self.instances.remove(&fullname.to_lowercase()) else {
            return;
        };
        if !self.instances.values().any(|n| *n == node) {
            self.devices.remove(&node);
        }
    }

    fn into_found(self) -> Vec<Found> {
        self.devices
            .into_iter()
            .map(|(node, addresses)| Found { node, addresses })
            .collect()
    }
}

/// An address as (IP, interface index for IPv6 scope; 0 for none).
fn scoped(ip: &ScopedIp) -> Option<(IpAddr, u32)> {
    match ip {
        ScopedIp::V4(v4) => Some((IpAddr::V4(*v4.addr()), 0)),
        ScopedIp::V6(v6) => Some((IpAddr::V6(*v6.addr()), v6.scope_id().index)),
        _ => None,
    }
}

/// A device from one resolved record's parts, or `None` if the record is
/// unusable: no valid node name, port 0, or no address to connect to.
fn device(
    node: Option<&[u8]>,
    port: u16,
    addresses: impl Iterator<Item = (IpAddr, u32)>,
) -> Option<(String, Vec<SocketAddr>)> {
    let node = std::str::from_utf8(node?).ok()?;
    check_node(node).ok()?;
    if port == 0 {
        return None;
    }
    let addresses = ordered(
        addresses
            .filter_map(|(ip, scope)| socket_address(ip, scope, port))
            .take(MAX_ADDRESSES * 4)
            .collect(),
    );
    (!addresses.is_empty()).then(|| (node.to_string(), addresses))
}

/// Where to connect for an announced address, if anywhere: never to a
/// loopback, unspecified, multicast or broadcast address (another device
/// cannot be reached there), nor to a link-local IPv6 address whose
/// interface is unknown.
fn socket_address(ip: IpAddr, scope: u32, port: u16) -> Option<SocketAddr> {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return None;
    }
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => None,
        IpAddr::V4(_) => Some(SocketAddr::new(ip, port)),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => {
            (scope != 0).then(|| SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope)))
        }
        IpAddr::V6(v6) => Some(SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0))),
    }
}

/// IPv4 first, then routable IPv6, then link-local IPv6; no duplicates; at
/// most [`MAX_ADDRESSES`].
fn ordered(mut addresses: Vec<SocketAddr>) -> Vec<SocketAddr> {
    fn rank(a: &SocketAddr) -> u8 {
        match a {
            SocketAddr::V4(_) => 0,
            SocketAddr::V6(v6) if v6.ip().is_unicast_link_local() => 2,
            SocketAddr::V6(_) => 1,
        }
    }
    addresses.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    addresses.dedup();
    addresses.truncate(MAX_ADDRESSES);
    addresses
}

fn check_node(node: &str) -> Result<(), DiscoverError> {
    let why = if node.is_empty() {
        "empty"
    } else if node.len() > MAX_NODE_LEN {
        "longer than 63 bytes"
    } else if node.chars().any(char::is_control) {
        "has a control character"
    } else if node.trim() != node {
        "starts or ends with white space"
    } else {
        return Ok(());
    };
    Err(DiscoverError::InvalidNode {
        node: node.to_string(),
        why,
    })
}

fn check_service_type(service_type: &str) -> Result<(), DiscoverError> {
    let name = service_type
        .strip_suffix("._tcp.local.")
        .or_else(|| service_type.strip_suffix("._udp.local."))
        .and_then(|rest| rest.strip_prefix('_'));
    let valid = name.is_some_and(|name| {
        (1..=MAX_SERVICE_NAME_LEN).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-')
    });
    if valid {
        Ok(())
    } else {
        Err(DiscoverError::InvalidServiceType(service_type.to_string()))
    }
}

/// The host label of `node`'s address records: its letters and digits, then
/// a hash of the whole name, so that two nodes whose names differ only in
/// other characters do not clash, and the label is a valid DNS host name.
fn host_label(node: &str) -> String {
    let mut readable: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    while readable.contains("--") {
        readable = readable.replace("--", "-");
    }
    let readable = readable.trim_matches('-');
    let hash = blake3::hash(node.as_bytes()).to_hex();
    if readable.is_empty() {
        format!("mindoo-{}", &hash[..12])
    } else {
        format!("{readable}-{}", &hash[..12])
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_first_then_routable_then_scoped_link_local_ipv6() {
        let (node, addresses) = device(
            Some(b"laptop"),
            7700,
            [
                (ip("fe80::1"), 3),
                (ip("fe80::2"), 0), // no scope: unusable
                (ip("fd00::5"), 0),
                (ip("192.168.1.9"), 0),
                (ip("10.0.0.2"), 0),
                (ip("127.0.0.1"), 0),
                (ip("::1"), 0),
                (ip("0.0.0.0"), 0),
                (ip("224.0.0.251"), 0),
                (ip("255.255.255.255"), 0),
                (ip("10.0.0.2"), 0), // twice
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(node, "laptop");
        let shown: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.2:7700",
                "192.168.1.9:7700",
                "[fd00::5]:7700",
                "[fe80::1%3]:7700"
            ]
        );
    }

    #[test]
    fn malformed_records_are_ignored() {
        let one = || [(ip("10.0.0.2"), 0)].into_iter();
        assert!(device(None, 7700, one()).is_none(), "no node property");
        assert!(device(Some(b""), 7700, one()).is_none(), "empty node");
        assert!(
            device(Some(&[0xff, 0xfe]), 7700, one()).is_none(),
            "not UTF-8"
        );
        assert!(device(Some(&[b'a'; 64]), 7700, one()).is_none(), "too long");
        assert!(
            device(Some(b"a\nb"), 7700, one()).is_none(),
            "control character"
        );
        assert!(device(Some(b"laptop"), 0, one()).is_none(), "port 0");
        let none_usable = [(ip("127.0.0.1"), 0), (ip("fe80::1"), 0)].into_iter();
        assert!(device(Some(b"laptop"), 7700, none_usable).is_none());
        assert!(device(Some(b"laptop"), 7700, one()).is_some());
    }

    #[test]
    fn addresses_per_device_are_capped() {
        let many = (0..=255u8).map(|i| (IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 0));
        let (_, addresses) = device(Some(b"noisy"), 1, many).unwrap();
        assert_eq!(addresses.len(), MAX_ADDRESSES);
    }

    #[test]
    fn each_device_once_without_itself_and_capped() {
        let at = |last: u8| vec![SocketAddr::from((Ipv4Addr::new(10, 0, 0, last), 7700))];
        let mut seen = Seen::new(Some("me"), 3);
        seen.add("me._t._tcp.local.", "me".into(), at(1));
        seen.add("b._t._tcp.local.", "b".into(), at(2));
        seen.add("a._t._tcp.local.", "a".into(), at(3));
        // The same node again (another interface, or renamed on a conflict):
        // one device with both addresses.
        seen.add("a (2)._t._tcp.local.", "a".into(), at(4));
        seen.add("c._t._tcp.local.", "c".into(), at(5));
        seen.add("d._t._tcp.local.", "d".into(), at(6)); // over the cap
        let found = Seen::into_found(seen);
        let nodes: Vec<&str> = found.iter().map(|f| f.node.as_str()).collect();
        assert_eq!(nodes, ["a", "b", "c"]);
        assert_eq!(found[0].addresses, [at(3)[0], at(4)[0]]);
    }

    #[test]
    fn a_goodbye_removes_the_device_once_all_its_instances_left() {
        let at = SocketAddr::from((Ipv6Addr::LOCALHOST, 1));
        let mut seen = Seen::new(None, 10);
        seen.add("A._t._tcp.local.", "a".into(), vec![at]);
        seen.add("a (2)._t._tcp.local.", "a".into(), vec![at]);
        seen.add("b._t._tcp.local.", "b".into(), vec![at]);
        seen.removed("b._t._tcp.local.");
        seen.removed("a._t._tcp.local."); // case-insensitive
        seen.removed("unknown._t._tcp.local.");
        assert_eq!(seen.devices.keys().collect::<Vec<_>>(), ["a"]);
        seen.removed("a (2)._t._tcp.local.");
        assert!(seen.into_found().is_empty());
    }

    #[test]
    fn node_names_and_service_types_are_checked() {
        assert!(check_node("laptop of ada").is_ok());
        assert!(check_node("änne's phone").is_ok());
        assert!(check_node(" laptop").is_err());
        assert!(check_node("").is_err());
        assert!(matches!(
            advertise("", 7700),
            Err(DiscoverError::InvalidNode { .. })
        ));
        assert!(matches!(
            advertise("laptop", 0),
            Err(DiscoverError::InvalidPort)
        ));
        assert!(check_service_type(SERVICE_TYPE).is_ok());
        assert!(check_service_type("_x._udp.local.").is_ok());
        for bad in [
            "_mindoo-sync._tcp.local",
            "mindoo-sync._tcp.local.",
            "_._tcp.local.",
            "_mindoo-sync-and-more._tcp.local.",
            "_mindoo sync._tcp.local.",
            "_mindoo-sync._sctp.local.",
        ] {
            assert!(check_service_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_labels_are_valid_and_distinct() {
        let a = host_label("Ada's Laptop!");
        assert!(a.starts_with("ada-s-laptop-"), "{a}");
        assert_ne!(a, host_label("Ada's Laptop?"));
        assert!(host_label("ΩΩΩ").starts_with("mindoo-"));
        for label in [a, host_label(&"x".repeat(63)), host_label("--a--")] {
            assert!(label.len() <= 63, "{label}");
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
            assert!(!label.starts_with('-') && !label.ends_with('-'), "{label}");
        }
    }
}
