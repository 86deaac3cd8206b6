//! Shards that name other shards of their sweep: a child's `train.init_from` selector
//! resolved to its parent's id, and `[[pairs]]` expanded into pair shards.
//!
//! Both match shards "on every other key": two configs match when they agree on every
//! `section.field` (and top-level key) except the ones a rule sets apart. A child's parent
//! is the one shard without `init_from` that satisfies the selector and agrees with the child
//! on everything but `train.init_from`, `train.data_seed` and the selector's keys. A pair
//! joins each shard of group `a` with the one shard of group `b` that agrees with it on
//! everything but the keys the two groups name.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::{PlannedShard, resolve};
use crate::config::{ConfigError, ShardConfig, locate_key};
use crate::storage::ids::ShardId;

/// Keys a child may differ in from its parent without saying so.
const CHILD_KEYS: [&str; 2] = ["train.init_from", "train.data_seed"];

/// How [`locate_key`] names the section of a `[[pairs]]` table.
const PAIRS_SECTION: &str = "[pairs";

/// Conditions `key = value` on flattened config values.
type Selector = BTreeMap<String, Value>;

/// A config as `section.field → value` (top-level scalars under their own name).
fn flatten(config: &ShardConfig) -> BTreeMap<String, Value> {
    let mut flat = BTreeMap::new();
    if let Ok(Value::Object(top)) = serde_json::to_value(config) {
        for (key, value) in top {
            match value {
                Value::Object(fields) => {
                    for (field, v) in fields {
                        flat.insert(format!("{key}.{field}"), v);
                    }
                }
                other => {
                    flat.insert(key, other);
                }
            }
        }
    }
    flat
}

/// The part of a flattened config that must agree, as one comparable string.
fn signature(flat: &BTreeMap<String, Value>, apart: &BTreeSet<String>) -> String {
    let kept: BTreeMap<&String, &Value> =
        flat.iter().filter(|(k, _)| !apart.contains(*k)).collect();
    serde_json::to_string(&kept).unwrap_or_default()
}

fn satisfies(flat: &BTreeMap<String, Value>, selector: &Selector) -> bool {
    selector
        .iter()
        .all(|(k, v)| flat.get(k).unwrap_or(&Value::Null) == v)
}

/// Parses `key=value, key=value` (keys as in `[grid]`, values in TOML).
fn parse_selector(text: &str) -> Result<Selector, String> {
    let mut out = Selector::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not `key=value`"))?;
        let key = resolve(key.trim())?;
        let doc: toml::Table = toml::from_str(&format!("v = {}", value.trim()))
            .map_err(|_| format!("`{}` is not a TOML value", value.trim()))?;
        let value = serde_json::to_value(&doc["v"]).map_err(|e| e.to_string())?;
        out.insert(key, value);
    }
    Ok(out)
}

/// Selector tables of `[[pairs]]` (`a = { data_seed = 1 }`) with keys resolved.
fn selector_of(table: &toml::Value) -> Result<Selector, String> {
    let table = table
        .as_table()
        .ok_or("must be a table of `key = value` conditions")?;
    if table.is_empty() {
        return Err("names no key: a group must differ from the other in something".into());
    }
    table
        .iter()
        .map(|(k, v)| {
            Ok((
                resolve(k)?,
                serde_json::to_value(v).map_err(|e| e.to_string())?,
            ))
        })
        .collect()
}

/// Parents with a given set of keys set apart, indexed by signature.
struct Parents<'a> {
    shards: &'a [PlannedShard],
    flat: Vec<BTreeMap<String, Value>>,
    by_apart: HashMap<BTreeSet<String>, HashMap<String, Vec<usize>>>,
}

impl<'a> Parents<'a> {
    fn new(shards: &'a [PlannedShard]) -> Self {
        Self {
            shards,
            flat: shards.iter().map(|s| flatten(&s.config)).collect(),
            by_apart: HashMap::new(),
        }
    }

    /// Shards (among those `eligible` admits) that satisfy `selector` and agree with `flat`
    /// except on `apart`.
    fn matching(
        &mut self,
        flat: &BTreeMap<String, Value>,
        (apart, selector): (&BTreeSet<String>, &Selector),
        eligible: &dyn Fn(&PlannedShard) -> bool,
    ) -> Vec<usize> {
        let (shards, all) = (self.shards, &self.flat);
        let index = self.by_apart.entry(apart.clone()).or_insert_with(|| {
            let mut index: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, f) in all.iter().enumerate() {
                if eligible(&shards[i]) {
                    index.entry(signature(f, apart)).or_default().push(i);
                }
            }
            index
        });
        let hits = index
            .get(&signature(flat, apart))
            .map_or(&[][..], Vec::as_slice);
        hits.iter()
            .copied()
            .filter(|j| satisfies(&all[*j], selector))
            .collect()
    }
}

/// Resolves every `train.init_from` selector of `shards` to its parent's id (the child's id
/// changes with it), checks the step against the parent, and records the needs of every
/// shard whose parent is in the sweep. `error` builds a located error for a field.
pub(super) fn resolve_parents(
    shards: &mut [PlannedShard],
    error: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let snapshot: Vec<PlannedShard> = shards.to_vec();
    let ids: HashMap<ShardId, usize> = snapshot
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), i))
        .collect();
    let mut parents = Parents::new(&snapshot);
    for (i, child) in shards.iter_mut().enumerate() {
        let Some(from) = child.config.train.init_from.clone() else {
            continue;
        };
        let describe = describe(&child.point);
        let parent = match ShardId::parse(from.shard.clone()) {
            Ok(id) => ids.get(&id).copied(),
            Err(_) => {
                let selector = parse_selector(&from.shard)
                    .map_err(|m| error("train.init_from", format!("shard ({describe}): {m}")))?;
                let mut apart: BTreeSet<String> = CHILD_KEYS.map(str::to_owned).into();
                apart.extend(selector.keys().cloned());
                let flat = parents.flat[i].clone();
                let eligible = |s: &PlannedShard| s.config.train.init_from.is_none();
                let found = parents.matching(&flat, (&apart, &selector), &eligible);
                match found.as_slice() {
                    [one] => Some(*one),
                    [] => {
                        return Err(error(
                            "train.init_from",
                            format!(
                                "shard ({describe}): the selector {:?} matches no shard of the \
                                 sweep without `init_from` that agrees with it on every other key",
                                from.shard
                            ),
                        ));
                    }
                    many => {
                        let names: Vec<String> =
                            many.iter().map(|j| describe_of(&snapshot[*j])).collect();
                        return Err(error(
                            "train.init_from",
                            format!(
                                "shard ({describe}): the selector {:?} matches {} shards \
                                 ({}); name more keys",
                                from.shard,
                                many.len(),
                                names.join("; ")
                            ),
                        ));
                    }
                }
            }
        };
        if let Some(p) = parent {
            let parent = &snapshot[p];
            parent
                .config
                .keeps_snapshot(from.step)
                .map_err(|m| error("train.init_from", format!("shard ({describe}): {m}")))?;
            if let Some(init) = child.config.train.init_from.as_mut() {
                init.shard = parent.id.to_string();
            }
            child.id = child.config.shard_id();
            child.needs = vec![parent.id.clone()];
        }
        child.config.check_resolved().map_err(|v| {
            error(
                "train.init_from",
                format!("shard ({describe}): {}", v.message),
            )
        })?;
    }
    Ok(())
}

/// Pair shards for every `[[pairs]]` table: each shard of group `a` joined with the one shard
/// of group `b` that agrees with it on every key but those the two groups name, as the
/// positions `(a, b)` of its two ends in `shards`.
pub(super) fn plan_pairs(
    shards: &[PlannedShard],
    tables: &[toml::Table],
    src: &str,
    file: &str,
) -> Result<Vec<(usize, usize)>, ConfigError> {
    let mut out = Vec::new();
    let mut index = Parents::new(shards);
    for (n, table) in tables.iter().enumerate() {
        let err = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            line: locate_key(src, PAIRS_SECTION, key).unwrap_or(1),
            field: format!("pairs[{n}].{key}"),
            message,
        };
        if let Some(key) = table.keys().find(|k| !["a", "b"].contains(&k.as_str())) {
            return Err(err(key, "a [[pairs]] table has only `a` and `b`".into()));
        }
        let group = |key: &str| {
            let t = table
                .get(key)
                .ok_or_else(|| err(key, format!("missing: the selector of group `{key}`")))?;
            selector_of(t).map_err(|m| err(key, m))
        };
        let (a, b) = (group("a")?, group("b")?);
        let apart: BTreeSet<String> = a.keys().chain(b.keys()).cloned().collect();
        let before = out.len();
        for (i, x) in shards.iter().enumerate() {
            let flat = index.flat[i].clone();
            if x.config.pair.is_some() || !satisfies(&flat, &a) {
                continue;
            }
            let partners = index.matching(&flat, (&apart, &b), &|s| s.config.pair.is_none());
            let (j, y) = match partners.as_slice() {
                [one] => (*one, &shards[*one]),
                [] => {
                    return Err(err(
                        "b",
                        format!(
                            "no shard of group `b` agrees with ({}) on every other key",
                            describe(&x.point)
                        ),
                    ));
                }
                many => {
                    return Err(err(
                        "b",
                        format!(
                            "{} shards of group `b` agree with ({}): add the keys they differ in",
                            many.len(),
                            describe(&x.point)
                        ),
                    ));
                }
            };
            // `a` and `b` selecting the same shard would give a line from θ_c to itself: a
            // barrier of 0 that halves every mean it enters.
            if y.id == x.id {
                return Err(err(
                    "b",
                    format!(
                        "groups `a` and `b` both select shard {}: a pair needs two different \
                         shards (give `b` a value of its key that `a` does not have)",
                        describe_of(x)
                    ),
                ));
            }
            out.push((i, j));
        }
        if out.len() == before {
            return Err(err("a", "group `a` matches no shard of the sweep".into()));
        }
    }
    Ok(out)
}

fn describe(point: &[(String, String)]) -> String {
    point
        .iter()
        .map(|(p, v)| format!("{p}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_of(s: &PlannedShard) -> String {
    format!("{} ({})", s.id, describe(&s.point))
}
