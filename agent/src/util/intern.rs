//! Names restored from saved state. Series keys, label names and a few alarm fields are
//! `&'static str` (they come from the catalogue and the code); read back from a file
//! they must become static again. Each distinct name is leaked once and reused, so the
//! memory is bounded by the vocabulary, not by how often state is read.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{LazyLock, Mutex},
};

use serde::{Deserialize, Deserializer};

/// A static name in a type serde derives `Deserialize` for: written as `&'static str`,
/// serde would borrow it from the input (and demand `'de: 'static`); through this
/// alias it is read with [`de_str`].
pub type Static = &'static str;

static NAMES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);

/// The one static copy of `name`.
pub fn intern(name: &str) -> &'static str {
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// `deserialize_with` for a `&'static str` field.
pub fn de_str<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    String::deserialize(d).map(|s| intern(&s))
}

/// `deserialize_with` for a `BTreeMap<&'static str, V>` field.
pub fn de_str_map<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
    d: D,
) -> Result<BTreeMap<&'static str, V>, D::Error> {
    let map = BTreeMap::<String, V>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (intern(&k), v)).collect())
}

/// `deserialize_with` for labels: `Vec<(&'static str, String)>`.
pub fn de_labels<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(&'static str, String)>, D::Error> {
    let labels = Vec::<(String, String)>::deserialize(d)?;
    Ok(labels.into_iter().map(|(k, v)| (intern(&k), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_name() {
        let a = intern(&String::from("block.io.latency"));
        let b = intern(&String::from("block.io.latency"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "block.io.latency");
    }
}
