//! The parts of an architecture file the demo needs to build a system from it. The agent
//! validates the file; the demo only reads it.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Model {
    pub components: Vec<Component>,
    #[serde(default)]
    pub externals: Vec<External>,
    pub flows: Vec<Flow>,
}

#[derive(Debug, Deserialize)]
pub struct Component {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

impl Component {
    /// The pod labels the component selects (the default selector when none is written).
    pub fn labels(&self) -> BTreeMap<String, String> {
        if self.selector.is_empty() {
            BTreeMap::from([("app.kubernetes.io/name".to_owned(), self.name.clone())])
        } else {
            self.selector.clone()
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct External {
    pub name: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Flow {
    pub id: String,
    pub from: String,
    pub to: String,
    pub ports: Vec<u16>,
    #[serde(default)]
    pub via: Option<String>,
}

impl Flow {
    pub fn port_forward(&self) -> bool {
        self.via.as_deref() == Some("port-forward")
    }
}

pub fn load(path: &std::path::Path) -> Result<Model> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| {
        format!(
            "{} is not an architecture the demo can read",
            path.display()
        )
    })
}
