//! Sweep specs: one TOML file whose `[grid]` lists expand, by cartesian product, into shards.
//!
//! ```toml
//! name = "mnist-mli"
//!
//! [grid]
//! optimizer = ["sgd", "adam"]   # short names resolve to their section (`train.optimizer`)
//! seed = [0, 1, 2]
//! "model.hidden" = [[1024, 1024], [512]]
//!
//! [[include]]                    # extra points, merged over the shared defaults
//! optimizer = "sgd"
//! lr = 0.5
//!
//! [[exclude]]                    # grid points matching every key are dropped
//! optimizer = "adam"
//! seed = 2
//!
//! [train]                        # shared defaults: any shard-config section
//! epochs = 3
//!
//! [storage]
//! results = "file:///shared/sweeps"
//! ```
//!
//! Every shard is a full [`ShardConfig`], validated like a shard file; its id is
//! [`ShardConfig::shard_id`], so the same spec always plans the same shards and adding seeds
//! adds only the new ones. Errors name the file, the line and the key.

mod links;

use std::path::Path;

use std::hash::BuildHasher;

use serde::Deserialize;

use crate::config::{ConfigError, PairOf, ShardConfig, locate_key, toml_error};

/// Top-level keys that belong to the sweep, not to its shards.
const SWEEP_KEYS: [&str; 7] = [
    "name",
    "grid",
    "include",
    "exclude",
    "pairs",
    "storage",
    "max_shards",
];

/// The most shards a spec may expand to unless it sets `max_shards`: a typo in a grid (a
/// seed range of 10⁷) should be an error in a second, not a plan that fills memory.
pub const DEFAULT_MAX_SHARDS: usize = 1_000_000;

/// One shard of a planned sweep, with its config built ([`SweepPlan::shards`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedShard {
    /// Stable shard id (config hash).
    pub id: ShardId,
    /// The full config.
    pub config: ShardConfig,
    /// The grid (or include) values that made this shard, as `(path, value)` for display.
    pub point: Vec<(String, String)>,
    /// Shards of the same sweep that must be committed before it runs (its parent, or the
    /// two ends of its pair line); the coordinator gates it on them.
    pub needs: Vec<ShardId>,
}

/// A parsed and expanded sweep spec.
///
/// It holds each shard as its id and where its config comes from (a grid point's index, an
/// include, the two ends of a pair: about 100 bytes) rather than the config itself (about
/// 7 KB): a 10⁶-shard plan fits in memory, and [`SweepPlan::shards`] rebuilds the configs one
/// at a time, as a submission streams them.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPlan {
    /// Sweep name: the results partition `sweep=<name>`.
    pub name: SweepName,
    /// `[storage] results`, if given.
    pub results: Option<String>,
    /// The shared settings (everything outside `[grid]`, `[[include]]`, `[[exclude]]`) as a
    /// canonical JSON object of dotted keys: the coordinator refuses a resubmission that
    /// changes them, so that one sweep name never silently mixes two experiments.
    pub base_json: String,
    /// The shared values every shard starts from.
    base: toml::Table,
    axes: Vec<Axis>,
    includes: Vec<Point>,
    /// Where a relative `data.dir` is relative to (the spec file's folder).
    spec_dir: Option<std::path::PathBuf>,
    /// Shards in grid order (the first grid key in the file varies slowest), then includes,
    /// then pair shards; a shard that needs another comes after it; no duplicates.
    slots: Vec<Slot>,
    /// Whether some shard has `train.init_from`.
    children: bool,
}

/// A grid axis: resolved path and its values.
type Axis = (String, Vec<toml::Value>);

/// Where a planned shard's config comes from.
#[derive(Debug, Clone, PartialEq)]
enum Origin {
    /// Grid point n of the mixed-radix product ([`grid_point`]).
    Grid(usize),
    /// `[[include]]` number k.
    Include(usize),
    /// A spec without grid and includes: the shared values alone.
    Lone,
    /// The pair line between the shards at these positions: the `a` end's config with
    /// `pair` set.
    Pair { a: usize, b: usize },
}

/// One shard of a plan, compactly.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    id: ShardId,
    origin: Origin,
    /// Its `train.init_from` names `needs[0]`, the parent its selector resolved to.
    resolved_parent: bool,
    needs: Box<[ShardId]>,
}

impl SweepPlan {
    /// How many shards the sweep has.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it has none (a plan never does: an empty sweep is refused).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The shard ids in plan order.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = &ShardId> {
        self.slots.iter().map(|s| &s.id)
    }

    /// Whether some shard starts from another's snapshot (`train.init_from`).
    pub fn has_children(&self) -> bool {
        self.children
    }

    /// The shards in plan order, each config built as it is reached.
    pub fn shards(&self) -> impl ExactSizeIterator<Item = PlannedShard> + DoubleEndedIterator + '_ {
        self.slots.iter().map(|slot| PlannedShard {
            id: slot.id.clone(),
            config: self.config_of(slot),
            point: self.point_of(slot),
            needs: slot.needs.to_vec(),
        })
    }

    /// Each shard's id and grid point, without building its config.
    pub fn points(&self) -> impl ExactSizeIterator<Item = (&ShardId, Vec<(String, String)>)> {
        self.slots.iter().map(|s| (&s.id, self.point_of(s)))
    }

    /// The values that made a shard, as planned.
    fn raw_point(&self, origin: &Origin) -> Point {
        match origin {
            Origin::Grid(n) => grid_point(&self.axes, *n),
            Origin::Include(k) => self.includes[*k].clone(),
            Origin::Lone | Origin::Pair { .. } => Vec::new(),
        }
    }

    fn point_of(&self, slot: &Slot) -> Vec<(String, String)> {
        if let Origin::Pair { a, b } = slot.origin {
            let mut point = self.point_of(&self.slots[a]);
            let (a, b) = (&self.slots[a].id, &self.slots[b].id);
            point.push(("pair".into(), format!("{a} ↔ {b}")));
            return point;
        }
        displayed(&self.raw_point(&slot.origin))
    }

    /// Rebuilds a shard's config exactly as planning built it.
    fn config_of(&self, slot: &Slot) -> ShardConfig {
        if let Origin::Pair { a, b } = slot.origin {
            let mut config = self.config_of(&self.slots[a]);
            config.pair = Some(PairOf {
                a: self.slots[a].id.clone(),
                b: self.slots[b].id.clone(),
            });
            return config;
        }
        let point = self.raw_point(&slot.origin);
        // The same values deserialised at plan time without error: they cannot fail now.
        let mut config = config_at(&self.base, &point)
            .expect("a planned shard's values deserialise as they did when planned");
        if slot.resolved_parent
            && let (Some(init), Some(parent)) =
                (config.train.init_from.as_mut(), slot.needs.first())
        {
            init.shard = parent.to_string();
        }
        debug_assert_eq!(config.shard_id(), slot.id);
        // As in a shard config: a relative `data.dir` means relative to the spec file. Ids do
        // not change (the dataset's location is not part of them).
        if let (Some(base), Some(dir)) = (&self.spec_dir, &config.data.dir)
            && dir.is_relative()
        {
            config.data.dir = Some(base.join(dir));
        }
        config
    }
}

use crate::storage::ids::{ShardId, SweepName};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Storage {
    results: Option<String>,
}

/// Reads and expands a spec file.
pub fn plan_file(path: &Path) -> Result<SweepPlan, ConfigError> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let mut plan = plan(&src, &file)?;
    plan.spec_dir = Some(path.parent().unwrap_or_else(|| Path::new(".")).to_owned());
    Ok(plan)
}

/// Parses and expands spec text; `file` names the source in errors.
pub fn plan(src: &str, file: &str) -> Result<SweepPlan, ConfigError> {
    let invalid = |section: &str, key: &str, message: String| ConfigError::Invalid {
        file: file.to_owned(),
        line: locate_key(src, section, key).unwrap_or(1),
        field: if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        },
        message,
    };
    let doc: toml::Table = toml::from_str(src).map_err(|e| toml_error(src, file, &e))?;
    let spec = Spec::of(doc, &invalid)?;
    check_shared(&spec.base, &invalid)?;
    let base_json = flat_json(&spec.base);
    let (axes, axis_keys) = grid_axes(spec.grid, &invalid)?;
    let resolve_table =
        |t: toml::Table, section: &str| -> Result<Vec<(String, toml::Value)>, ConfigError> {
            t.into_iter()
                .map(|(k, v)| Ok((resolve(&k).map_err(|m| invalid(section, &k, m))?, v)))
                .collect()
        };
    let excludes: Vec<Point> = spec
        .excludes
        .into_iter()
        .map(|t| resolve_table(t, "exclude"))
        .collect::<Result<_, _>>()?;
    let total = grid_size(&axes, spec.includes.len(), spec.max_shards, &invalid)?;
    check_axis_values(&spec.base, &axes, &axis_keys, &invalid)?;
    let includes: Vec<Point> = spec
        .includes
        .into_iter()
        .map(|inc| resolve_table(inc, "include"))
        .collect::<Result<_, _>>()?;
    let mut plan = SweepPlan {
        name: spec.name,
        results: spec.results,
        base_json,
        base: spec.base,
        axes,
        includes,
        spec_dir: None,
        slots: Vec::new(),
        children: false,
    };
    expand(&mut plan, total, &excludes, file, &invalid)?;
    if plan.children || !spec.pairs.is_empty() {
        link(&mut plan, &spec.pairs, src, file)?;
    }
    Ok(plan)
}

/// Plans every grid point (less the excluded), then the includes, as slots: each config is
/// built and validated once here and dropped, only its id kept.
fn expand(
    plan: &mut SweepPlan,
    total: usize,
    excludes: &[Point],
    file: &str,
    invalid: Invalid<'_>,
) -> Result<(), ConfigError> {
    // A spec without a grid and without includes is a sweep of one shard: its shared values
    // (so any shard config, such as examples/shard-mnist-mlp.toml, plans as itself).
    let lone = (plan.axes.is_empty() && plan.includes.is_empty()).then_some(Origin::Lone);
    // Streamed: a combination that fails validation is reported at its own point, not after
    // the whole product has been built.
    let origins = (0..total)
        .map(Origin::Grid)
        .chain(lone)
        .chain((0..plan.includes.len()).map(Origin::Include));
    // Two points can plan one shard (a value equal to its default): the first is kept. The
    // set of ids seen holds positions in `slots`, not copies of the ids (a tenth the memory).
    let hasher = std::hash::RandomState::new();
    let mut seen: hashbrown::HashTable<usize> = hashbrown::HashTable::new();
    let mut slots: Vec<Slot> = Vec::with_capacity(total + plan.includes.len() + 1);
    for origin in origins {
        let point = plan.raw_point(&origin);
        if matches!(origin, Origin::Grid(_)) && excluded(&point, excludes) {
            continue;
        }
        let config = shard_of(&plan.base, &point, file, invalid)?;
        plan.children |= config.train.init_from.is_some();
        let id = config.shard_id();
        let hash = hasher.hash_one(&id);
        if seen.find(hash, |&i| slots[i].id == id).is_some() {
            continue;
        }
        seen.insert_unique(hash, slots.len(), |&i| hasher.hash_one(&slots[i].id));
        slots.push(Slot {
            id,
            origin,
            resolved_parent: false,
            needs: Box::new([]),
        });
    }
    if slots.is_empty() {
        return Err(invalid(
            "",
            "grid",
            "the sweep has no shards: every grid point is excluded".into(),
        ));
    }
    plan.slots = slots;
    Ok(())
}

/// Resolves `train.init_from` selectors and expands `[[pairs]]` (links.rs) on the built
/// configs, then keeps what they decided in the slots, in dependency order.
fn link(
    plan: &mut SweepPlan,
    pairs: &[toml::Table],
    src: &str,
    file: &str,
) -> Result<(), ConfigError> {
    let located = |field: &str, message: String| ConfigError::Invalid {
        file: file.to_owned(),
        line: first_line_naming(src, field.rsplit('.').next().unwrap_or(field)),
        field: field.to_owned(),
        message,
    };
    let mut shards: Vec<PlannedShard> = plan.shards().collect();
    links::resolve_parents(&mut shards, &located)?;
    for (slot, shard) in plan.slots.iter_mut().zip(&shards) {
        slot.resolved_parent = !shard.needs.is_empty();
        slot.id = shard.id.clone();
        slot.needs = shard.needs.clone().into();
    }
    for (a, b) in links::plan_pairs(&shards, pairs, src, file)? {
        let needs = Box::new([shards[a].id.clone(), shards[b].id.clone()]);
        let mut slot = Slot {
            id: shards[a].id.clone(),
            origin: Origin::Pair { a, b },
            resolved_parent: false,
            needs,
        };
        slot.id = plan.config_of(&slot).shard_id();
        plan.slots.push(slot);
    }
    plan.slots = in_dependency_order(std::mem::take(&mut plan.slots));
    Ok(())
}

/// How a spec error is reported: `(section, key, message)` → an error naming file and line.
type Invalid<'a> = &'a dyn Fn(&str, &str, String) -> ConfigError;

/// A spec split into its sweep keys and its shared shard-config values.
struct Spec {
    name: SweepName,
    results: Option<String>,
    max_shards: usize,
    grid: toml::Table,
    includes: Vec<toml::Table>,
    excludes: Vec<toml::Table>,
    pairs: Vec<toml::Table>,
    /// Everything else: the values every shard shares.
    base: toml::Table,
}

impl Spec {
    /// Takes the sweep keys ([`SWEEP_KEYS`]) out of `doc`, each checked for its type.
    fn of(mut doc: toml::Table, invalid: Invalid<'_>) -> Result<Spec, ConfigError> {
        let name = match doc.remove("name") {
            Some(toml::Value::String(n)) => {
                SweepName::parse(n).map_err(|e| invalid("", "name", e.to_string()))?
            }
            Some(_) => return Err(invalid("", "name", "must be a string".into())),
            None => return Err(invalid("", "name", "every sweep needs a `name`".into())),
        };
        let results = match doc.remove("storage") {
            Some(v) => {
                Storage::deserialize(v)
                    .map_err(|e| invalid("storage", "results", e.message().to_owned()))?
                    .results
            }
            None => None,
        };
        let max_shards = match doc.remove("max_shards") {
            None => DEFAULT_MAX_SHARDS,
            Some(toml::Value::Integer(n)) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            Some(_) => {
                let message = "must be a positive integer".into();
                return Err(invalid("", "max_shards", message));
            }
        };
        let grid = match doc.remove("grid") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(invalid("", "grid", "must be a table of lists".into())),
            None => toml::Table::new(),
        };
        let mut tables = |key: &str| -> Result<Vec<toml::Table>, ConfigError> {
            let wrong = || invalid("", key, format!("use [[{key}]] tables"));
            match doc.remove(key) {
                None => Ok(Vec::new()),
                Some(toml::Value::Array(items)) => items
                    .into_iter()
                    .map(|v| match v {
                        toml::Value::Table(t) => Ok(t),
                        _ => Err(wrong()),
                    })
                    .collect(),
                Some(_) => Err(wrong()),
            }
        };
        let (includes, excludes) = (tables("include")?, tables("exclude")?);
        let pairs = tables("pairs")?;
        debug_assert!(SWEEP_KEYS.iter().all(|k| !doc.contains_key(*k)));
        Ok(Spec {
            name,
            results,
            max_shards,
            grid,
            includes,
            excludes,
            pairs,
            base: doc,
        })
    }
}

/// The line of the first mention of `key` in the spec (1 if none): where a value that may
/// come from the grid, an include or a section is reported.
fn first_line_naming(src: &str, key: &str) -> usize {
    src.lines()
        .position(|l| l.contains(key))
        .map_or(1, |i| i + 1)
}

/// A pair slot's two ends by id, while positions change.
type Ends = Option<(ShardId, ShardId)>;

/// Drops duplicates (two selectors can resolve to one child) and puts every shard after
/// the shards it needs, otherwise keeping the plan's order: the coordinator records a need
/// only on a shard it already has. Pair slots point at their ends' new positions.
fn in_dependency_order(slots: Vec<Slot>) -> Vec<Slot> {
    use std::collections::HashMap;
    let ends: Vec<Ends> = slots
        .iter()
        .map(|s| match s.origin {
            Origin::Pair { a, b } => Some((slots[a].id.clone(), slots[b].id.clone())),
            _ => None,
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let kept: Vec<(Slot, Ends)> = slots
        .into_iter()
        .zip(ends)
        .filter(|(s, _)| seen.insert(s.id.clone()))
        .collect();
    let index: HashMap<&ShardId, usize> = kept
        .iter()
        .enumerate()
        .map(|(i, (s, _))| (&s.id, i))
        .collect();
    // Depth: 0 for a shard that needs none of the sweep, else one more than its deepest need.
    // Ids are hashes of configs that name their needs, so needs cannot form a cycle.
    let mut depth: Vec<Option<usize>> = vec![None; kept.len()];
    fn depth_of(
        i: usize,
        kept: &[(Slot, Ends)],
        index: &HashMap<&ShardId, usize>,
        depth: &mut [Option<usize>],
    ) -> usize {
        if let Some(d) = depth[i] {
            return d;
        }
        depth[i] = Some(0);
        let d = kept[i]
            .0
            .needs
            .iter()
            .filter_map(|n| index.get(n).copied())
            .map(|j| 1 + depth_of(j, kept, index, depth))
            .max()
            .unwrap_or(0);
        depth[i] = Some(d);
        d
    }
    let depths: Vec<usize> = (0..kept.len())
        .map(|i| depth_of(i, &kept, &index, &mut depth))
        .collect();
    drop(index);
    let mut order: Vec<(usize, (Slot, Ends))> = depths.into_iter().zip(kept).collect();
    order.sort_by_key(|(d, _)| *d);
    let position: HashMap<ShardId, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (_, (s, _)))| (s.id.clone(), i))
        .collect();
    order
        .into_iter()
        .map(|(_, (mut slot, ends))| {
            if let Some((a, b)) = ends {
                slot.origin = Origin::Pair {
                    a: position[&a],
                    b: position[&b],
                };
            }
            slot
        })
        .collect()
}

/// The shared values are checked key by key here, where lines are still known; the per-shard
/// deserialisation then only meets values coming from the grid.
fn check_shared(base: &toml::Table, invalid: Invalid<'_>) -> Result<(), ConfigError> {
    for (key, value) in base {
        match value {
            toml::Value::Table(fields) => {
                for field in fields.keys() {
                    resolve(&format!("{key}.{field}")).map_err(|m| invalid(key, field, m))?;
                }
            }
            _ if resolve(key).as_deref() == Ok(key.as_str()) => {}
            _ => {
                return Err(invalid(
                    "",
                    key,
                    format!(
                        "`{key}` is neither a sweep key ({}) nor a top-level shard-config field",
                        SWEEP_KEYS.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The shared values as a canonical JSON object of dotted keys ([`SweepPlan::base_json`]).
fn flat_json(base: &toml::Table) -> String {
    let mut flat = std::collections::BTreeMap::new();
    for (key, value) in base {
        match value {
            toml::Value::Table(fields) => {
                for (field, v) in fields {
                    flat.insert(format!("{key}.{field}"), v.clone());
                }
            }
            other => {
                flat.insert(key.clone(), other.clone());
            }
        }
    }
    // Serializing a map of TOML values to JSON cannot fail.
    serde_json::to_string(&flat).unwrap_or_default()
}

/// The grid's axes (resolved path, values) and the keys as the spec spells them.
#[allow(clippy::type_complexity)]
fn grid_axes(
    grid: toml::Table,
    invalid: Invalid<'_>,
) -> Result<(Vec<(String, Vec<toml::Value>)>, Vec<String>), ConfigError> {
    let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
    let mut axis_keys: Vec<String> = Vec::new();
    for (key, values) in grid {
        let path = resolve(&key).map_err(|m| invalid("grid", &key, m))?;
        let toml::Value::Array(values) = values else {
            let message = "grid values are lists, e.g. [0, 1, 2]".into();
            return Err(invalid("grid", &key, message));
        };
        if values.is_empty() {
            let message = "an empty list gives an empty grid".into();
            return Err(invalid("grid", &key, message));
        }
        axes.push((path, values));
        axis_keys.push(key);
    }
    Ok((axes, axis_keys))
}

/// The number of grid points (0 without axes: only includes), refused above `max_shards`
/// together with the includes.
fn grid_size(
    axes: &[(String, Vec<toml::Value>)],
    includes: usize,
    max_shards: usize,
    invalid: Invalid<'_>,
) -> Result<usize, ConfigError> {
    let total: usize = if axes.is_empty() {
        0
    } else {
        axes.iter()
            .try_fold(1usize, |n, (_, v)| n.checked_mul(v.len()))
            .unwrap_or(usize::MAX)
    };
    if total.saturating_add(includes) <= max_shards {
        return Ok(total);
    }
    let sizes: Vec<String> = axes
        .iter()
        .map(|(p, v)| format!("{p}: {}", v.len()))
        .collect();
    let count = if total == usize::MAX {
        "too many".to_owned()
    } else {
        total.to_string()
    };
    Err(invalid(
        "",
        "grid",
        format!(
            "the grid expands to {count} shards ({}), more than max_shards = {max_shards}; \
             set `max_shards` at the top of the spec to allow more",
            sizes.join(" × ")
        ),
    ))
}

/// Each grid value alone over the shared values must at least be of the field's type (a
/// string where a number goes, an unknown optimizer): caught here, before any expansion.
fn check_axis_values(
    base: &toml::Table,
    axes: &[(String, Vec<toml::Value>)],
    axis_keys: &[String],
    invalid: Invalid<'_>,
) -> Result<(), ConfigError> {
    for ((path, values), key) in axes.iter().zip(axis_keys) {
        for value in values {
            let mut table = base.clone();
            set_path(&mut table, path, value.clone());
            if let Err(e) = ShardConfig::deserialize(toml::Value::Table(table)) {
                let message = e.message().trim().replace('\n', " ");
                return Err(invalid("grid", key, format!("{path} = {value}: {message}")));
            }
        }
    }
    Ok(())
}

/// A grid point: `(path, value)` per axis.
type Point = Vec<(String, toml::Value)>;

/// Point n of the cartesian product in mixed radix: digit k of n picks axis k's value, the
/// last axis varying fastest.
fn grid_point(axes: &[Axis], mut n: usize) -> Point {
    let mut point = vec![(String::new(), toml::Value::Boolean(false)); axes.len()];
    for (k, (path, values)) in axes.iter().enumerate().rev() {
        point[k] = (path.clone(), values[n % values.len()].clone());
        n /= values.len();
    }
    point
}

/// A point's values as text, for display.
fn displayed(point: &Point) -> Vec<(String, String)> {
    point
        .iter()
        .map(|(p, v)| match v {
            toml::Value::String(s) => (p.clone(), s.clone()),
            other => (p.clone(), other.to_string()),
        })
        .collect()
}

/// Whether every key of some `[[exclude]]` matches the point.
fn excluded(point: &Point, excludes: &[Point]) -> bool {
    excludes.iter().any(|ex| {
        ex.iter()
            .all(|(path, v)| point.iter().any(|(q, w)| q == path && w == v))
    })
}

/// The shard of one point: the shared values with the point's over them, deserialised,
/// normalised and validated; errors name the grid key when the point set it.
fn shard_of(
    base: &toml::Table,
    point: &Point,
    file: &str,
    invalid: Invalid<'_>,
) -> Result<ShardConfig, ConfigError> {
    let describe = || {
        point
            .iter()
            .map(|(p, v)| format!("{p}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = config_at(base, point).map_err(|e| ConfigError::Parse {
        file: file.to_owned(),
        message: format!(
            "shard ({}): {}",
            describe(),
            e.message().trim().replace('\n', " ")
        ),
    })?;
    // `train.init_from` selectors are resolved once every shard is planned (links.rs).
    if let Err(v) = config.validate() {
        let key = format!("{}.{}", v.section, v.key);
        let in_grid = point
            .iter()
            .any(|(p, _)| *p == key || (v.section.is_empty() && p == v.key));
        let (section, k) = if in_grid {
            ("grid", v.key)
        } else {
            (v.section, v.key)
        };
        let mut err = invalid(section, k, format!("shard ({}): {}", describe(), v.message));
        if let ConfigError::Invalid { field, .. } = &mut err {
            *field = v.field();
        }
        return Err(err);
    }
    Ok(config)
}

/// The shared values with a point's over them, deserialised and normalised.
fn config_at(base: &toml::Table, point: &Point) -> Result<ShardConfig, toml::de::Error> {
    let mut table = base.clone();
    for (path, value) in point {
        set_path(&mut table, path, value.clone());
    }
    ShardConfig::deserialize(toml::Value::Table(table)).map(ShardConfig::normalized)
}

/// Resolves a grid key to a dotted shard-config path: `train.lr` stays, `lr` becomes
/// `train.lr`, `seed` stays; a short name found in two sections is ambiguous.
fn resolve(key: &str) -> Result<String, String> {
    // Fields left out of the JSON at their default (which keeps older ids unchanged) are set
    // to something else here, so that the catalog names every field.
    let mut every_field = ShardConfig::default();
    every_field.snapshot.keep = crate::config::Keep::Lines;
    every_field.train.data_seed = Some(0);
    every_field.eval.monotone_path = true;
    every_field.eval.plane = Some(crate::config::PlaneConfig::default());
    every_field.train.init_from = Some(crate::config::InitFrom {
        shard: String::new(),
        step: 0,
    });
    let catalog = serde_json::to_value(every_field).unwrap_or_default();
    let obj = catalog.as_object().cloned().unwrap_or_default();
    if let Some((section, field)) = key.split_once('.') {
        return match obj.get(section).and_then(|s| s.as_object()) {
            Some(fields) if fields.contains_key(field) => Ok(key.to_owned()),
            Some(fields) => Err(format!(
                "`{field}` is not a field of [{section}]; it has: {}",
                fields.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            None => Err(format!("`{section}` is not a shard-config section")),
        };
    }
    if obj.get(key).is_some_and(|v| !v.is_object()) {
        return Ok(key.to_owned());
    }
    let hits: Vec<String> = obj
        .iter()
        .filter_map(|(s, v)| {
            v.as_object()
                .filter(|f| f.contains_key(key))
                .map(|_| format!("{s}.{key}"))
        })
        .collect();
    match hits.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("`{key}` is not a shard-config field")),
        many => Err(format!(
            "`{key}` is ambiguous: write one of {}",
            many.join(", ")
        )),
    }
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    match path.split_once('.') {
        Some((section, field)) => {
            let entry = table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = entry {
                t.insert(field.to_owned(), value);
            }
        }
        None => {
            table.insert(path.to_owned(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SweepPlan {
        fn all(&self) -> Vec<PlannedShard> {
            self.shards().collect()
        }
    }

    const SPEC: &str = r#"
name = "mli"

[grid]
optimizer = ["sgd", "adam"]
seed = [0, 1, 2]

[[exclude]]
optimizer = "adam"
seed = 2

[[include]]
"train.optimizer" = "sgd"
lr = 0.5

[train]
epochs = 3
"#;

    #[test]
    fn grid_expands_with_excludes_and_includes() {
        let p = plan(SPEC, "s.toml").unwrap();
        let shards = p.all();
        assert_eq!(p.name, "mli");
        assert_eq!(p.len(), 2 * 3 - 1 + 1);
        assert!(shards.iter().all(|s| s.config.train.epochs == 3));
        let adam = shards
            .iter()
            .filter(|s| s.config.train.optimizer.as_str() == "adam")
            .count();
        assert_eq!(adam, 2);
        assert_eq!(shards.last().unwrap().config.train.lr, 0.5);
        // Stable: planning twice gives the same ids; adding a seed adds only new shards.
        let again = plan(SPEC, "s.toml").unwrap();
        assert_eq!(
            shards.iter().map(|s| &s.id).collect::<Vec<_>>(),
            again.all().iter().map(|s| &s.id).collect::<Vec<_>>()
        );
        let more = plan(
            &SPEC.replace("seed = [0, 1, 2]", "seed = [0, 1, 2, 3]"),
            "s.toml",
        )
        .unwrap();
        let more_shards = more.all();
        let old: std::collections::HashSet<_> = shards.iter().map(|s| s.id.clone()).collect();
        let new: Vec<_> = more_shards
            .iter()
            .filter(|s| !old.contains(&s.id))
            .collect();
        assert_eq!(new.len(), 2);
        assert!(new.iter().all(|s| s.config.seed == 3));
    }

    #[test]
    fn the_first_grid_key_in_the_file_varies_slowest() {
        let p = plan(
            "name = \"o\"\n[grid]\nseed = [7, 8]\noptimizer = [\"sgd\", \"adam\"]\n",
            "o.toml",
        )
        .unwrap();
        let shards = p.all();
        let order: Vec<(u64, &str)> = shards
            .iter()
            .map(|s| (s.config.seed, s.config.train.optimizer.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![(7, "sgd"), (7, "adam"), (8, "sgd"), (8, "adam")]
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err = plan("name = \"x\"\n[grid]\nlearning_rate = [1]\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("s.toml:3: field `grid.learning_rate`")
                && err.contains("not a shard-config field"),
            "{err}"
        );
        let err = plan("name = \"x\"\n[grid]\nbatch_size = [1]\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ambiguous")
                && err.contains("train.batch_size")
                && err.contains("eval.batch_size"),
            "{err}"
        );
        let err = plan("name = \"x\"\n[grid]\nseed = []\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("s.toml:3:") && err.contains("empty grid"),
            "{err}"
        );
        // No grid: one shard, the shared values. A grid whose every point is excluded: none.
        assert_eq!(plan("name = \"x\"\n", "s.toml").unwrap().len(), 1);
        let err = plan(
            "name = \"x\"\n[grid]\nseed = [1]\n[[exclude]]\nseed = 1\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no shards"), "{err}");
        let err = plan("[grid]\nseed = [1]\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a `name`"), "{err}");
        let err = plan(
            "name = \"x\"\n[grid]\nactivation = [\"relu\", \"gelu\"]\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gelu") && err.contains("sigmoid"), "{err}");
        let err = plan("name = \"x\"\n[grid]\nlr = [0.1, -1.0]\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("s.toml:3: field `train.lr`") && err.contains("lr=-1.0"),
            "{err}"
        );
        let err = plan("name = \"x\"\nbogus = 1\n[grid]\nseed = [1]\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.toml:2: field `bogus`"), "{err}");
        let err = plan(
            "name = \"x\"\n[grid]\nseed = [1]\n[train]\nepoch = 3\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("s.toml:5: field `train.epoch`") && err.contains("epochs"),
            "{err}"
        );
        let err = plan("name = \"2024\"\n[grid]\nseed = [1]\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a sweep name"), "{err}");
    }

    #[test]
    fn init_from_names_a_parent_by_id_and_is_a_grid_axis() {
        let spec = "name = \"c\"\n[grid]\ninit_from = [{ shard = \"0123456789abcdef\", step = 0 }, \
                    { shard = \"0123456789abcdef\", step = 50 }]\ndata_seed = [1, 2]\n";
        let p = plan(spec, "c.toml").unwrap();
        let shards = p.all();
        assert_eq!(p.len(), 4);
        let steps: Vec<u64> = shards
            .iter()
            .map(|s| s.config.train.init_from.as_ref().unwrap().step)
            .collect();
        assert_eq!(steps, [0, 0, 50, 50]);
        let ids: std::collections::HashSet<_> = shards.iter().map(|s| &s.id).collect();
        assert_eq!(ids.len(), 4, "the parent's step is part of the id");
        // A selector that matches no shard of the sweep: refused, naming the field and line.
        let spec = "name = \"c\"\n[train]\ninit_from = { shard = \"seed=0\", step = 0 }\n";
        let err = plan(spec, "c.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("c.toml:3: field `train.init_from`")
                && err.contains("matches no shard"),
            "{err}"
        );
        let spec = "name = \"c\"\n[train]\ninit_from = { shard = \"ab\", stp = 0 }\n";
        let err = plan(spec, "c.toml").unwrap_err().to_string();
        assert!(err.contains("stp"), "{err}");
    }

    /// Children spawned from parents of the same sweep, and pairs of children.
    const LMC: &str = r#"name = "lmc"
[train]
epochs = 1
batch_size = 100
[snapshot]
every = 10
[grid]
seed = [1, 2]
data_seed = [7, 8]
init_from = [{ step = 0 }, { step = 20 }]
[[include]]
seed = 1
[[include]]
seed = 2
[[pairs]]
a = { data_seed = 7 }
b = { data_seed = 8 }
"#;

    #[test]
    fn children_find_their_parents_and_pairs_their_partners() {
        let p = plan(LMC, "lmc.toml").unwrap();
        let shards = p.all();
        let (pairs, rest): (Vec<_>, Vec<_>) = shards.iter().partition(|s| s.config.pair.is_some());
        let (children, parents): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|s| s.config.train.init_from.is_some());
        assert_eq!((parents.len(), children.len(), pairs.len()), (2, 8, 4));
        let position = |id: &ShardId| shards.iter().position(|s| &s.id == id).unwrap();
        for child in &children {
            let from = child.config.train.init_from.as_ref().unwrap();
            let parent = parents
                .iter()
                .find(|s| s.id.as_str() == from.shard)
                .unwrap();
            assert_eq!(parent.config.seed, child.config.seed);
            assert_eq!(child.needs, std::slice::from_ref(&parent.id));
            assert_eq!(child.id, child.config.shard_id(), "the id names the parent");
            assert!(position(&parent.id) < position(&child.id));
        }
        for pair in &pairs {
            let of = pair.config.pair.as_ref().unwrap();
            let [a, b] = [&of.a, &of.b].map(|id| &shards[position(id)].config);
            assert_eq!((a.train.data_seed, b.train.data_seed), (Some(7), Some(8)));
            assert_eq!(
                (a.seed, a.train.init_from.as_ref()),
                (b.seed, b.train.init_from.as_ref())
            );
            assert_eq!(pair.needs, [of.a.clone(), of.b.clone()]);
            assert!(position(&of.a).max(position(&of.b)) < position(&pair.id));
        }
        // Bad links are refused at plan time with the field and the line.
        let err = |spec: String| plan(&spec, "lmc.toml").unwrap_err().to_string();
        let beyond = err(LMC.replace("step = 20 }]", "step = 90 }]"));
        assert!(
            beyond.contains("beyond the parent's training, which ends at step 80"),
            "{beyond}"
        );
        let off_grid = err(LMC.replace("step = 20 }]", "step = 25 }]"));
        assert!(
            off_grid.contains("keeps no snapshot at step 25"),
            "{off_grid}"
        );
        let orphan = err(LMC.replace(
            "[[include]]\nseed = 2\n",
            "[[include]]\nseed = 1\nlr = 0.5\n",
        ));
        assert!(orphan.contains("matches no shard"), "{orphan}");
        // Parents that differ only in a key a child may differ in: which one is meant?
        let ambiguous = err(LMC.replace(
            "[[pairs]]",
            "[[include]]\nseed = 1\ndata_seed = 5\n[[pairs]]",
        ));
        assert!(ambiguous.contains("matches 2 shards"), "{ambiguous}");
        // The same parent twice is one shard (deduplicated), not an ambiguity.
        let twice = LMC.replace(
            "[[pairs]]",
            "[[include]]\nseed = 2\n\"train.batch_size\" = 100\n[[pairs]]",
        );
        assert_eq!(plan(&twice, "lmc.toml").unwrap().len(), 14);
        let selector = err(LMC.replace("{ step = 0 }", "{ shard = \"lr=0.5\", step = 0 }"));
        assert!(selector.starts_with("lmc.toml:"), "{selector}");
        assert!(selector.contains("field `train.init_from`"), "{selector}");
        let unpaired = err(LMC.replace("data_seed = 8 }", "data_seed = 9 }"));
        assert!(
            unpaired.contains("field `pairs[0].b`") && unpaired.contains("no shard of group `b`"),
            "{unpaired}"
        );
        let nothing = err(LMC.replace("a = { data_seed = 7 }", "a = { data_seed = 3 }"));
        assert!(nothing.contains("group `a` matches no shard"), "{nothing}");
        // `a` and `b` selecting the same shards: X↔X is no pair (barrier 0), refused.
        let same = err(LMC.replace("data_seed = 8 }", "data_seed = 7 }"));
        assert!(
            same.contains("field `pairs[0].b`") && same.contains("both select shard"),
            "{same}"
        );
    }

    #[test]
    fn a_relative_data_dir_is_relative_to_the_spec_file() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = tmp.path().join("specs/s.toml");
        std::fs::create_dir_all(spec.parent().unwrap()).unwrap();
        let text = "name = \"s\"\n[data]\ndataset = \"mnist\"\ndir = \"../data/mnist\"\n[grid]\nseed = [0, 1]\n";
        std::fs::write(&spec, text).unwrap();
        let p = plan_file(&spec).unwrap();
        let shards = p.all();
        let from_text = plan(text, "s.toml").unwrap();
        for (a, b) in shards.iter().zip(&from_text.all()) {
            assert_eq!(
                a.config.data.dir,
                Some(tmp.path().join("specs/../data/mnist"))
            );
            assert_eq!(a.id, b.id, "the location is not part of the id");
        }
    }

    #[test]
    fn a_huge_grid_is_refused_before_it_is_expanded() {
        let seeds = (0..2000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let spec = format!("name = \"big\"\n[grid]\nseed = [{seeds}]\nlr = [{seeds}]\n");
        let err = plan(&spec, "big.toml").unwrap_err().to_string();
        assert!(
            err.contains("4000000 shards") && err.contains("max_shards"),
            "{err}"
        );
        let allowed = "name = \"s\"\nmax_shards = 4\n[grid]\nseed = [0, 1, 2, 3]\n";
        assert_eq!(plan(allowed, "s.toml").unwrap().len(), 4);
        let over = "name = \"s\"\nmax_shards = 3\n[grid]\nseed = [0, 1, 2, 3]\n";
        assert!(plan(over, "s.toml").is_err());
    }

    #[test]
    fn a_bad_value_is_found_without_expanding_the_grid() {
        // 10⁷ points allowed; the tenth is invalid (a negative lr). The whole product used to
        // be built first (9.6 GB, 24 s); now the plan stops at that point.
        let seeds = (0..10_000).map(|i| i.to_string()).collect::<Vec<_>>();
        let mut lrs: Vec<String> = (1..=1000).map(|i| format!("{}.0", i)).collect();
        lrs[9] = "-1.0".into();
        let spec = format!(
            "name = \"big\"\nmax_shards = 10000000\n[grid]\nseed = [{}]\nlr = [{}]\n",
            seeds.join(", "),
            lrs.join(", ")
        );
        let err = plan(&spec, "big.toml").unwrap_err().to_string();
        assert!(err.contains("lr=-1.0") && err.contains("seed=0"), "{err}");
        // A value of the wrong type is refused before any point is built, wherever it is.
        let typo = "name = \"t\"\n[grid]\nseed = [0, 1]\noptimizer = [\"sgd\", \"adamw\"]\n";
        let err = plan(typo, "t.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("t.toml:4: field `grid.optimizer`") && err.contains("adamw"),
            "{err}"
        );
    }
}
