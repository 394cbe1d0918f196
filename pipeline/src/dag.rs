//! Tables and the dependencies between them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The medallion layer a table belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Bronze,
    Silver,
    Gold,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Bronze => "bronze",
            Layer::Silver => "silver",
            Layer::Gold => "gold",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A table of the pipeline, written `layer.name` (e.g. `silver.orders`).
///
/// ```
/// use medallion_pipeline::{Layer, TableRef};
///
/// let t: TableRef = "silver.orders".parse().unwrap();
/// assert_eq!(t, TableRef::new(Layer::Silver, "orders"));
/// assert_eq!(t.to_string(), "silver.orders");
/// // SQL may quote the parts.
/// assert_eq!("\"gold\".\"totals\"".parse::<TableRef>().unwrap().name, "totals");
/// assert!("orders".parse::<TableRef>().unwrap_err().contains("<layer>.<name>"));
/// assert!("platinum.x".parse::<TableRef>().unwrap_err().contains("unknown layer"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableRef {
    pub layer: Layer,
    pub name: String,
}

impl TableRef {
    pub fn new(layer: Layer, name: impl Into<String>) -> Self {
        Self {
            layer,
            name: name.into(),
        }
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.layer, self.name)
    }
}

impl FromStr for TableRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (layer, name) = s
            .split_once('.')
            .ok_or_else(|| format!("'{s}' is not a table; write it as <layer>.<name>"))?;
        let layer = match layer.trim_matches('"') {
            "bronze" => Layer::Bronze,
            "silver" => Layer::Silver,
            "gold" => Layer::Gold,
            other => return Err(format!("unknown layer '{other}' in '{s}'")),
        };
        Ok(TableRef::new(layer, name.trim_matches('"')))
    }
}

/// The table graph: each table with the tables it reads.
#[derive(Debug, Clone, Default)]
pub struct Dag {
    deps: BTreeMap<TableRef, BTreeSet<TableRef>>,
}

impl Dag {
    pub(crate) fn add(&mut self, table: TableRef, deps: BTreeSet<TableRef>) {
        self.deps.insert(table, deps);
    }

    /// The tables `table` reads.
    pub fn deps(&self, table: &TableRef) -> &BTreeSet<TableRef> {
        static NONE: BTreeSet<TableRef> = BTreeSet::new();
        self.deps.get(table).unwrap_or(&NONE)
    }

    /// `table` and every table that reads it, directly or through others.
    pub fn downstream(&self, table: &TableRef) -> BTreeSet<TableRef> {
        let mut found = BTreeSet::from([table.clone()]);
        loop {
            let more: Vec<TableRef> = self
                .deps
                .iter()
                .filter(|(t, deps)| !found.contains(*t) && deps.iter().any(|d| found.contains(d)))
                .map(|(t, _)| t.clone())
                .collect();
            if more.is_empty() {
                return found;
            }
            found.extend(more);
        }
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableRef> {
        self.deps.keys()
    }

    pub fn contains(&self, table: &TableRef) -> bool {
        self.deps.contains_key(table)
    }

    /// Tables in an order where every table comes after what it reads, or the tables of a
    /// cycle.
    pub fn topological_order(&self) -> Result<Vec<TableRef>, Vec<TableRef>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        fn visit(
            dag: &Dag,
            t: &TableRef,
            marks: &mut BTreeMap<TableRef, Mark>,
            stack: &mut Vec<TableRef>,
            order: &mut Vec<TableRef>,
        ) -> Result<(), Vec<TableRef>> {
            match marks.get(t) {
                Some(Mark::Done) => return Ok(()),
                Some(Mark::Visiting) => {
                    let start = stack.iter().position(|s| s == t).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(t.clone());
                    return Err(cycle);
                }
                None => {}
            }
            marks.insert(t.clone(), Mark::Visiting);
            stack.push(t.clone());
            for d in dag.deps(t) {
                if dag.contains(d) {
                    visit(dag, d, marks, stack, order)?;
                }
            }
            stack.pop();
            marks.insert(t.clone(), Mark::Done);
            order.push(t.clone());
            Ok(())
        }
        let mut marks = BTreeMap::new();
        let mut order = Vec::new();
        for t in self.deps.keys() {
            visit(self, t, &mut marks, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TableRef {
        s.parse().unwrap()
    }

    #[test]
    fn orders_dependencies_first_and_finds_cycles() {
        let mut dag = Dag::default();
        dag.add(t("gold.a"), [t("silver.x"), t("gold.b")].into());
        dag.add(t("gold.b"), [t("silver.x")].into());
        dag.add(t("silver.x"), [t("bronze.x")].into());
        dag.add(t("bronze.x"), BTreeSet::new());
        let order = dag.topological_order().unwrap();
        let pos = |s: &str| order.iter().position(|x| *x == t(s)).unwrap();
        assert!(pos("bronze.x") < pos("silver.x"));
        assert!(pos("gold.b") < pos("gold.a"));

        dag.add(t("gold.b"), [t("gold.a")].into());
        let cycle = dag.topological_order().unwrap_err();
        assert!(cycle.contains(&t("gold.a")) && cycle.contains(&t("gold.b")));
    }
}
