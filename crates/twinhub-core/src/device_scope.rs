//! IoT Edge scopes: how devices name their parent edge device (IoT Hub "device scope").
//!
//! An edge device (`capabilities.iotEdge`) has a scope of its own, `ms-azure-iot-edge://<id>-<generationId>`,
//! made by the hub and never changed by a back end. A device names its parent by that scope: a leaf device
//! by setting its `deviceScope` to it (the hub copies it into `parentScopes`), an edge device (nested edge)
//! by setting `parentScopes` to `[scope]` while its own `deviceScope` stays its own. A device has at most one
//! parent, and the parent must be an edge device other than itself and not below it.

use crate::ids::DeviceId;

const SCOPE_PREFIX: &str = "ms-azure-iot-edge://";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("'parentScopes' may name at most one parent; it names {0}")]
    SeveralParents(usize),
    #[error("the scope '{0}' names no edge device: a parent's scope is its 'deviceScope', ms-azure-iot-edge://<deviceId>-<generationId>")]
    NoSuchEdgeDevice(String),
    #[error("the scope '{scope}' names '{device_id}', which is not an edge device (capabilities.iotEdge)")]
    NotAnEdgeDevice { scope: String, device_id: DeviceId },
    #[error("a device cannot be its own parent ('{0}')")]
    OwnParent(String),
    #[error("the scope '{0}' names an edge device below this one: the parent chain would be a loop")]
    Loop(String),
}

/// The scope of edge device `device_id` of generation `generation_id`.
pub fn edge_scope(device_id: &DeviceId, generation_id: &str) -> String {
    format!("{SCOPE_PREFIX}{device_id}-{generation_id}")
}

/// The device a scope names and its generation: the id is everything up to the last `-`, as device ids
/// may contain dashes and generation ids do not.
pub fn parse(scope: &str) -> Option<(DeviceId, &str)> {
    let (id, generation) = scope.strip_prefix(SCOPE_PREFIX)?.rsplit_once('-')?;
    Some((DeviceId::new(id).ok()?, generation))
}

/// What the registry knows of a device, for checking a parent.
pub struct ScopeHolder<'a> {
    pub iot_edge: bool,
    pub generation_id: &'a str,
    pub parent_scopes: &'a [String],
}

/// The scopes a device gets from what a back end sent: `(deviceScope, parentScopes)`.
///
/// `previous_parent` is the parent it has now: kept as it is without checks, so a device whose parent was
/// deleted can still be updated with the document it was read with. `lookup` reads the registry.
pub fn resolve<'r>(
    device_id: &DeviceId,
    generation_id: &str,
    iot_edge: bool,
    given_scope: Option<&str>,
    given_parents: &[String],
    previous_parent: Option<&str>,
    lookup: impl Fn(&DeviceId) -> Option<ScopeHolder<'r>>,
) -> Result<(Option<String>, Vec<String>), ScopeError> {
    // An edge device's deviceScope is its own (read-only: a document read back carries it), its parent is
    // in parentScopes. A leaf's parent is its deviceScope, and its parentScopes follow: a document read
    // before the parent changed carries the old ones (the Azure CLI moves a leaf by changing deviceScope
    // alone), so what a leaf sends as parentScopes is not read.
    let parent = if iot_edge {
        let given_parents: Vec<&str> = given_parents
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        if given_parents.len() > 1 {
            return Err(ScopeError::SeveralParents(given_parents.len()));
        }
        given_parents.first().copied()
    } else {
        given_scope.filter(|scope| !scope.is_empty())
    };
    if let Some(parent) = parent.filter(|parent| Some(*parent) != previous_parent) {
        check_parent(device_id, parent, &lookup)?;
    }
    let parent_scopes: Vec<String> = parent.map(str::to_owned).into_iter().collect();
    let device_scope = if iot_edge {
        Some(edge_scope(device_id, generation_id))
    } else {
        parent.map(str::to_owned)
    };
    Ok((device_scope, parent_scopes))
}

fn check_parent<'r>(
    device_id: &DeviceId,
    parent: &str,
    lookup: &impl Fn(&DeviceId) -> Option<ScopeHolder<'r>>,
) -> Result<(), ScopeError> {
    let no_such = || ScopeError::NoSuchEdgeDevice(parent.to_owned());
    let (parent_id, generation) = parse(parent).ok_or_else(no_such)?;
    if &parent_id == device_id {
        return Err(ScopeError::OwnParent(parent.to_owned()));
    }
    let holder = lookup(&parent_id).ok_or_else(no_such)?;
    if !holder.iot_edge {
        return Err(ScopeError::NotAnEdgeDevice {
            scope: parent.to_owned(),
            device_id: parent_id,
        });
    }
    if holder.generation_id != generation {
        // The id of a device deleted and created again: its old scope names nothing now.
        return Err(no_such());
    }
    // Up the chain from the parent: meeting this device again would make a loop. A chain is finite
    // (every link was checked this way), and a bound keeps a corrupt one from spinning.
    let mut ancestor = holder.parent_scopes.first().cloned();
    for _ in 0..CHAIN_MAX {
        let Some(scope) = ancestor else { return Ok(()) };
        let Some((id, _)) = parse(&scope) else { return Ok(()) };
        if &id == device_id {
            return Err(ScopeError::Loop(parent.to_owned()));
        }
        ancestor = lookup(&id).and_then(|holder| holder.parent_scopes.first().cloned());
    }
    Ok(())
}

/// Longest parent chain followed when looking for loops (IoT Edge allows five layers below a device).
const CHAIN_MAX: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Registry(HashMap<DeviceId, (bool, String, Vec<String>)>);

    impl Registry {
        fn holder(&self, id: &DeviceId) -> Option<ScopeHolder<'_>> {
            self.0.get(id).map(|(iot_edge, generation, parents)| ScopeHolder {
                iot_edge: *iot_edge,
                generation_id: generation,
                parent_scopes: parents,
            })
        }
    }

    fn id(text: &str) -> DeviceId {
        DeviceId::new(text).unwrap()
    }

    fn registry() -> Registry {
        let mut devices = HashMap::new();
        devices.insert(id("edge-1"), (true, "637".to_owned(), vec![]));
        devices.insert(
            id("edge-2"),
            (true, "638".to_owned(), vec![edge_scope(&id("edge-1"), "637")]),
        );
        devices.insert(id("leaf"), (false, "639".to_owned(), vec![]));
        Registry(devices)
    }

    #[test]
    fn scopes_name_a_device_and_its_generation() {
        let scope = edge_scope(&id("edge-1"), "637121074930370650");
        assert_eq!(scope, "ms-azure-iot-edge://edge-1-637121074930370650");
        assert_eq!(parse(&scope), Some((id("edge-1"), "637121074930370650")));
        assert_eq!(parse("edge-1-637"), None);
        assert_eq!(parse("ms-azure-iot-edge://nodash"), None);
    }

    #[test]
    fn an_edge_device_has_its_own_scope_and_names_its_parent_in_parent_scopes() {
        let registry = registry();
        let parent = edge_scope(&id("edge-1"), "637");
        let resolved = resolve(&id("edge-3"), "700", true, None, &[], None, |id| registry.holder(id)).unwrap();
        assert_eq!(resolved, (Some(edge_scope(&id("edge-3"), "700")), vec![]));
        // What it is sent as its deviceScope is ignored: its own is read-only.
        let nested = resolve(
            &id("edge-3"),
            "700",
            true,
            Some("ms-azure-iot-edge://other-1"),
            std::slice::from_ref(&parent),
            None,
            |id| registry.holder(id),
        )
        .unwrap();
        assert_eq!(nested, (Some(edge_scope(&id("edge-3"), "700")), vec![parent]));
    }

    #[test]
    fn a_leaf_names_its_parent_in_device_scope_and_gets_it_in_parent_scopes() {
        let registry = registry();
        let parent = edge_scope(&id("edge-2"), "638");
        for parents in [
            vec![],
            vec![parent.clone()],
            vec!["stale".to_owned(), "copies".to_owned()],
        ] {
            let resolved = resolve(&id("leaf"), "639", false, Some(&parent), &parents, None, |id| {
                registry.holder(id)
            });
            assert_eq!(resolved, Ok((Some(parent.clone()), vec![parent.clone()])));
        }
        let orphan = resolve(&id("leaf"), "639", false, Some(""), &[], None, |id| registry.holder(id));
        assert_eq!(orphan, Ok((None, vec![])));
    }

    #[test]
    fn parents_that_are_not_edge_devices_or_make_loops_are_refused() {
        let registry = registry();
        let leaf = |scope: &str| {
            resolve(&id("leaf"), "639", false, Some(scope), &[], None, |id| {
                registry.holder(id)
            })
        };
        assert_eq!(
            leaf("not-a-scope"),
            Err(ScopeError::NoSuchEdgeDevice("not-a-scope".into()))
        );
        let gone = edge_scope(&id("edge-9"), "1");
        assert_eq!(leaf(&gone), Err(ScopeError::NoSuchEdgeDevice(gone.clone())));
        let recreated = edge_scope(&id("edge-1"), "999");
        assert_eq!(leaf(&recreated), Err(ScopeError::NoSuchEdgeDevice(recreated.clone())));
        let own = edge_scope(&id("leaf"), "639");
        assert_eq!(leaf(&own), Err(ScopeError::OwnParent(own.clone())));
        let another_leaf = resolve(
            &id("leaf-2"),
            "1",
            false,
            Some(&edge_scope(&id("leaf"), "639")),
            &[],
            None,
            |id| registry.holder(id),
        );
        assert!(matches!(another_leaf, Err(ScopeError::NotAnEdgeDevice { .. })));
        let two = [edge_scope(&id("edge-1"), "637"), edge_scope(&id("edge-2"), "638")];
        assert_eq!(
            resolve(&id("edge-3"), "7", true, None, &two, None, |id| registry.holder(id)),
            Err(ScopeError::SeveralParents(2))
        );
        // A leaf's parentScopes are its deviceScope's, whatever it sends (a stale copy, say).
        let stale = resolve(&id("leaf"), "639", false, Some(&two[1]), &two[..1], None, |id| {
            registry.holder(id)
        });
        assert_eq!(stale, Ok((Some(two[1].clone()), vec![two[1].clone()])));
        // edge-1 under edge-2, which is under edge-1: a loop.
        let looped = resolve(&id("edge-1"), "637", true, None, &two[1..], None, |id| {
            registry.holder(id)
        });
        assert_eq!(looped, Err(ScopeError::Loop(two[1].clone())));
    }

    #[test]
    fn a_parent_the_device_already_has_is_kept_unchecked() {
        let registry = registry();
        let gone = edge_scope(&id("edge-9"), "1");
        let kept = resolve(&id("leaf"), "639", false, Some(&gone), &[], Some(&gone), |id| {
            registry.holder(id)
        });
        assert_eq!(kept, Ok((Some(gone.clone()), vec![gone])));
    }
}
