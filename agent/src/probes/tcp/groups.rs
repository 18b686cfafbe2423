//! Peer port groups of the TCP probe (`[probes.tcp] groups`): parsing, validation and
//! the port → group table the kernel classifies each segment with.

use std::fmt;

use agent_common::tcp::{MAX_GROUPS, PORT_TABLE_ENTRIES};
use serde::{Deserialize, Deserializer};

/// A named set of TCP ports; a connection belongs to the group of its remote port,
/// else of its local port.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortGroup {
    pub name: String,
    pub ports: Vec<PortSpec>,
}

impl PortGroup {
    pub fn new(name: &str, ports: &[PortSpec]) -> Self {
        Self {
            name: name.to_owned(),
            ports: ports.to_vec(),
        }
    }
}

/// One port (`6789`) or an inclusive range (`"6800-7300"`). Bounds are checked by
/// [`validate`], so that the error can name the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub first: u32,
    pub last: u32,
}

impl PortSpec {
    pub const fn one(port: u32) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    pub const fn range(first: u32, last: u32) -> Self {
        Self { first, last }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "\"{}-{}\"", self.first, self.last)
        }
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
            Other(serde::de::IgnoredAny),
        }
        let bad = |what: &str| {
            serde::de::Error::custom(format!(
                "invalid port {what}: write a port number such as 6789 or a range such as \
                 \"6800-7300\""
            ))
        };
        let number = |text: &str| -> Result<u32, D::Error> {
            text.trim()
                .parse::<u32>()
                .map_err(|_| bad(&format!("\"{text}\"")))
        };
        match Raw::deserialize(d)? {
            Raw::Number(n) => u32::try_from(n)
                .map(Self::one)
                .map_err(|_| bad(&n.to_string())),
            Raw::Text(text) => match text.split_once('-') {
                Some((a, b)) => Ok(Self::range(number(a)?, number(b)?)),
                None => number(&text).map(Self::one),
            },
            Raw::Other(_) => Err(bad("value")),
        }
    }
}

/// Ceph's messenger: monitors on 3300 (msgr2) and 6789 (msgr1), OSDs (and MDS, MGR)
/// bind in 6800–7300.
pub fn ceph_defaults() -> Vec<PortGroup> {
    vec![
        PortGroup::new("ceph-mon", &[PortSpec::one(3300), PortSpec::one(6789)]),
        PortGroup::new("ceph-osd", &[PortSpec::range(6800, 7300)]),
    ]
}

/// Checks the groups and builds the port → group + 1 table (0: not watched). The
/// error says what is wrong, with which group, and how to fix it.
pub fn port_table(groups: &[PortGroup]) -> Result<Vec<u8>, String> {
    if groups.len() > MAX_GROUPS as usize {
        return Err(format!(
            "has {} groups; at most {MAX_GROUPS} are supported (merge some)",
            groups.len()
        ));
    }
    let mut table = vec![0u8; PORT_TABLE_ENTRIES as usize];
    for (index, group) in groups.iter().enumerate() {
        let name = group.name.trim();
        if name.is_empty() {
            return Err(format!(
                "group {} has an empty name; give it one",
                index + 1
            ));
        }
        if name.len() > 64 {
            return Err(format!(
                "group \"{name}\": the name is longer than 64 characters"
            ));
        }
        if groups[..index].iter().any(|g| g.name.trim() == name) {
            return Err(format!(
                "group name \"{name}\" is used twice; names must be unique"
            ));
        }
        if group.ports.is_empty() {
            return Err(format!("group \"{name}\" has no ports; list at least one"));
        }
        for spec in &group.ports {
            if spec.first == 0 || spec.last > 65_535 {
                return Err(format!(
                    "group \"{name}\": port {spec} is out of range; ports are 1 to 65535"
                ));
            }
            if spec.first > spec.last {
                return Err(format!(
                    "group \"{name}\": range {spec} is reversed; write the lower port first"
                ));
            }
            for port in spec.first..=spec.last {
                let slot = &mut table[port as usize];
                if *slot != 0 {
                    let other = &groups[*slot as usize - 1].name;
                    return Err(format!(
                        "port {port} is in group \"{other}\" and again in group \"{name}\"; \
                         a port can belong to one group only"
                    ));
                }
                *slot = index as u8 + 1;
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(ports: &str) -> Result<Vec<PortSpec>, String> {
        #[derive(Deserialize)]
        struct T {
            ports: Vec<PortSpec>,
        }
        toml::from_str::<T>(&format!("ports = {ports}"))
            .map(|t| t.ports)
            .map_err(|e| e.message().to_owned())
    }

    #[test]
    fn ports_are_numbers_or_ranges() {
        assert_eq!(
            parse(r#"[3300, "6789", "6800-7300", " 10 - 12 "]"#).unwrap(),
            vec![
                PortSpec::one(3300),
                PortSpec::one(6789),
                PortSpec::range(6800, 7300),
                PortSpec::range(10, 12),
            ]
        );
        for bad in [r#"["68oo"]"#, r#"["1-2-3"]"#, "[-5]", r#"["-"]"#, "[1.5]"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("6800-7300"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_ceph_defaults_classify_monitor_and_osd_ports() {
        let t = port_table(&ceph_defaults()).unwrap();
        assert_eq!(t.len(), 65_536);
        assert_eq!((t[3300], t[6789]), (1, 1));
        assert_eq!((t[6800], t[7000], t[7300]), (2, 2, 2));
        assert_eq!((t[6799], t[7301], t[22], t[0], t[65_535]), (0, 0, 0, 0, 0));
        assert_eq!(t.iter().filter(|&&g| g != 0).count(), 2 + 501);
    }

    fn err(groups: &[PortGroup]) -> String {
        port_table(groups).unwrap_err()
    }

    #[test]
    fn invalid_groups_are_named_with_the_fix() {
        let g = |name: &str, ports: &[PortSpec]| PortGroup::new(name, ports);
        let e = err(&[
            g("a", &[PortSpec::range(10, 20)]),
            g("b", &[PortSpec::one(15)]),
        ]);
        assert_eq!(
            e,
            "port 15 is in group \"a\" and again in group \"b\"; a port can belong to one \
             group only"
        );
        let e = err(&[g("a", &[PortSpec::one(1)]), g(" a ", &[PortSpec::one(2)])]);
        assert!(e.contains("\"a\" is used twice"), "{e}");
        assert!(err(&[g(" ", &[PortSpec::one(1)])]).contains("group 1 has an empty name"));
        assert!(err(&[g("a", &[])]).contains("has no ports"));
        let e = err(&[g("a", &[PortSpec::one(0)])]);
        assert!(
            e.contains("port 0 is out of range; ports are 1 to 65535"),
            "{e}"
        );
        let e = err(&[g("a", &[PortSpec::range(7, 70_000)])]);
        assert!(e.contains("\"7-70000\" is out of range"), "{e}");
        let e = err(&[g("a", &[PortSpec::range(20, 10)])]);
        assert!(e.contains("\"20-10\" is reversed"), "{e}");
        let many: Vec<PortGroup> = (1..=33)
            .map(|i| g(&format!("g{i}"), &[PortSpec::one(i)]))
            .collect();
        assert!(err(&many).contains("at most 32"));
        assert!(port_table(&many[..32]).is_ok());
    }

    #[test]
    fn the_whole_port_space_fits_in_one_group() {
        let t = port_table(&[PortGroup::new("all", &[PortSpec::range(1, 65_535)])]).unwrap();
        assert_eq!(t[0], 0);
        assert!(t[1..].iter().all(|&g| g == 1));
    }
}
