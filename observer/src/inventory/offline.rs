//! `--inventory FILE`: the cluster's objects from a file instead of the API, for demos, `check`
//! and clusters the agent may not query.
//!
//! Accepted: what `kubectl get pods,services,endpointslices -A -o yaml` (or `-o json`) prints
//! (a `kind: List`), typed lists (`PodList`, ...), single objects, and multi-document YAML of any
//! of these. Pods, Services, EndpointSlices and Jobs are used; other kinds (a ConfigMap that came
//! along) are skipped and counted. The objects go through the same index as the watchers' events,
//! as one `Init`..`InitDone` batch per kind, so the file replaces whatever was loaded before.

use std::{collections::BTreeMap, path::Path};

use k8s_openapi::api::{
    batch::v1::Job, core::v1::Pod, core::v1::Service, discovery::v1::EndpointSlice,
};
use kube::runtime::watcher::Event;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, value::RawValue};

use super::{Error, IndexHandle, Result};

/// The objects of an inventory file, by kind.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub jobs: Vec<Job>,
    /// Items of other kinds, skipped, by kind.
    pub skipped: BTreeMap<String, usize>,
}

/// What a load put into the index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub pods: usize,
    pub services: usize,
    pub endpoint_slices: usize,
    pub jobs: usize,
    pub skipped: BTreeMap<String, usize>,
}

/// Reads `path` and loads its objects into `index`.
///
/// The file is read and parsed on a thread of its own, so that the parse's allocations (the
/// text, a JSON tree and every object in full: several times what the index keeps) come from
/// that thread's malloc arena, all of it free once the objects are fed, while the index's
/// records are allocated on the caller's. Parsed on the caller's thread, the records end up
/// scattered over the pages of the parse's peak, which no trim can then give back.
pub fn load_file(path: &Path, index: &IndexHandle) -> Result<LoadReport> {
    let objects = std::thread::scope(|s| {
        s.spawn(|| {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
            parse(path, &text)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    Ok(objects.feed(index))
}

impl Objects {
    /// Feeds every kind as one complete list, replacing what the index held for that kind.
    pub fn feed(self, index: &IndexHandle) -> LoadReport {
        let report = LoadReport {
            pods: self.pods.len(),
            services: self.services.len(),
            endpoint_slices: self.endpoint_slices.len(),
            jobs: self.jobs.len(),
            skipped: self.skipped,
        };
        for (kind, n) in &report.skipped {
            tracing::warn!(kind = %kind, count = n, "inventory: skipped objects of a kind the agent does not use");
        }
        // The index copies what it keeps from borrowed objects, and the objects are freed only
        // when this returns: freed one by one between the index's allocations, their memory would be
        // handed straight back to them (through this thread's malloc cache) and the index
        // would end up spread over the pages of the parse's arena, which no trim can return.
        index.apply_jobs(as_list(&self.jobs));
        index.apply_pods(as_list(&self.pods));
        index.apply_services(as_list(&self.services));
        index.apply_endpoint_slices(as_list(&self.endpoint_slices));
        report
    }
}

fn as_list<K>(objs: &[K]) -> impl Iterator<Item = Event<&K>> {
    std::iter::once(Event::Init)
        .chain(objs.iter().map(Event::InitApply))
        .chain(std::iter::once(Event::InitDone))
}

/// Parses inventory text; `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Objects> {
    let mut out = Objects::default();
    if text.trim_start().starts_with('{') {
        parse_json(path, text, &mut out)?;
        return Ok(out);
    }
    let docs = yaml_documents(path, text)?;
    let multi = docs.len() > 1;
    for (d, mut doc) in docs.into_iter().enumerate() {
        let doc_loc = if multi {
            format!("document {} ", d + 1)
        } else {
            String::new()
        };
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !is_list(&kind, doc.get("items").is_some()) {
            add_item(path, &mut out, &format!("{doc_loc}object"), doc)?;
            continue;
        }
        // Taken, not cloned: the items are most of the document.
        let items = match doc.get_mut("items").map(Value::take) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(not_a_list(path, &doc_loc, &kind, &other)),
        };
        let api = doc.get("apiVersion").cloned();
        add_list_items(
            path,
            &mut out,
            &doc_loc,
            &kind,
            api,
            items.into_iter().map(Ok),
        )?;
    }
    Ok(out)
}

/// A JSON file, one document. `kubectl get -o json` of a large cluster is tens of megabytes, and
/// a JSON tree of it takes ten times that; so the top level is read with its values left as
/// text, and the items are decoded one at a time from that text.
fn parse_json(path: &Path, text: &str, out: &mut Objects) -> Result<()> {
    let syntax = |e: serde_json::Error| Error::Syntax {
        path: path.to_owned(),
        format: "JSON",
        message: e.to_string(),
    };
    let top: BTreeMap<String, &RawValue> = serde_json::from_str(text).map_err(syntax)?;
    let field = |name: &str| -> Result<Option<Value>> {
        top.get(name)
            .map(|raw| serde_json::from_str(raw.get()).map_err(syntax))
            .transpose()
    };
    let kind = field("kind")?
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !is_list(&kind, top.contains_key("items")) {
        let doc = serde_json::from_str(text).map_err(syntax)?;
        return add_item(path, out, "object", doc);
    }
    let items: Vec<&RawValue> = match top.get("items").map(|raw| raw.get()) {
        None | Some("null") => Vec::new(),
        Some(raw) => serde_json::from_str(raw).map_err(|_| match serde_json::from_str(raw) {
            Ok(other) => not_a_list(path, "", &kind, &other),
            Err(e) => syntax(e),
        })?,
    };
    let items = items
        .into_iter()
        .map(|raw| serde_json::from_str(raw.get()).map_err(syntax));
    add_list_items(path, out, "", &kind, field("apiVersion")?, items)
}

/// Whether a document of `kind` is a list of objects rather than one object.
fn is_list(kind: &str, has_items: bool) -> bool {
    kind == "List" || (kind.ends_with("List") && has_items)
}

fn not_a_list(path: &Path, doc_loc: &str, kind: &str, items: &Value) -> Error {
    Error::Shape {
        path: path.to_owned(),
        message: format!(
            "{doc_loc}kind {kind}: `items` is {}, expected a list",
            type_name(items)
        ),
    }
}

/// Adds a list's items, each dropped as soon as it is decoded.
fn add_list_items(
    path: &Path,
    out: &mut Objects,
    doc_loc: &str,
    kind: &str,
    api: Option<Value>,
    items: impl Iterator<Item = Result<Value>>,
) -> Result<()> {
    // A typed list (PodList) may leave out each item's kind and apiVersion.
    let implied = kind
        .strip_suffix("List")
        .filter(|k| !k.is_empty())
        .map(|k| (k.to_owned(), api));
    for (i, item) in items.enumerate() {
        let mut item = item?;
        if let (Some((k, api)), Some(obj)) = (&implied, item.as_object_mut()) {
            obj.entry("kind")
                .or_insert_with(|| Value::String(k.clone()));
            if let Some(api) = api {
                obj.entry("apiVersion").or_insert_with(|| api.clone());
            }
        }
        add_item(path, out, &format!("{doc_loc}item {i}"), item)?;
    }
    Ok(())
}

/// A YAML file's documents; empty documents are dropped.
fn yaml_documents(path: &Path, text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (d, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(de).map_err(|e| Error::Syntax {
            path: path.to_owned(),
            format: "YAML",
            message: format!("document {}: {e}", d + 1),
        })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    if docs.is_empty() {
        return Err(Error::Shape {
            path: path.to_owned(),
            message: "no Kubernetes objects in the file".into(),
        });
    }
    Ok(docs)
}

fn add_item(path: &Path, out: &mut Objects, location: &str, item: Value) -> Result<()> {
    let err = |kind: &str, name: String, message: String| Error::Item {
        path: path.to_owned(),
        location: location.to_owned(),
        kind: kind.to_owned(),
        name,
        message,
    };
    let Value::Object(map) = &item else {
        return Err(err(
            "?",
            "?".into(),
            format!("is {}, expected an object", type_name(&item)),
        ));
    };
    let meta = map.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    let name = match (field("namespace"), field("name")) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_owned(),
        _ => "(no name)".to_owned(),
    };
    let Some(kind) = map.get("kind").and_then(Value::as_str).map(str::to_owned) else {
        return Err(err("?", name, "has no `kind`".into()));
    };
    let api = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let group = api.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind.as_str()) {
        ("", "Pod") => out.pods.push(decode(item, |m| err(&kind, name, m))?),
        ("", "Service") => out.services.push(decode(item, |m| err(&kind, name, m))?),
        ("discovery.k8s.io", "EndpointSlice") => out
            .endpoint_slices
            .push(decode(item, |m| err(&kind, name, m))?),
        ("batch", "Job") => out.jobs.push(decode(item, |m| err(&kind, name, m))?),
        _ => *out.skipped.entry(format!("{api} {kind}")).or_default() += 1,
    }
    Ok(())
}

/// Decodes one object, naming the field that failed (`spec.ports[0].port: invalid type ...`).
fn decode<K: DeserializeOwned>(item: Value, err: impl FnOnce(String) -> Error) -> Result<K> {
    serde_path_to_error::deserialize(item).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        err(if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        })
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{IpOwner, NodeAddresses};

    fn p() -> &'static Path {
        Path::new("inv.yaml")
    }

    const KUBECTL_YAML: &str = r#"
apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    labels:
      app.kubernetes.io/name: web
      pod-template-hash: 5f7b9c
    name: web-5f7b9c-abcde
    namespace: shop
    ownerReferences:
    - apiVersion: apps/v1
      blockOwnerDeletion: true
      controller: true
      kind: ReplicaSet
      name: web-5f7b9c
      uid: 0b6f3c1e-0000-0000-0000-000000000001
    resourceVersion: "1001"
    uid: 0b6f3c1e-0000-0000-0000-000000000002
  spec:
    containers:
    - image: web:1
      name: web
      ports:
      - containerPort: 8080
        name: http
        protocol: TCP
    nodeName: node-a
  status:
    hostIP: 192.168.1.10
    phase: Running
    podIP: 10.244.1.5
    podIPs:
    - ip: 10.244.1.5
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: settings
    namespace: shop
  data:
    a: b
- apiVersion: v1
  kind: Service
  metadata:
    name: web
    namespace: shop
    uid: 0b6f3c1e-0000-0000-0000-000000000003
  spec:
    clusterIP: 10.96.0.20
    clusterIPs:
    - 10.96.0.20
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: http
    selector:
      app.kubernetes.io/name: web
    type: ClusterIP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.1.5
    conditions:
      ready: true
    targetRef:
      kind: Pod
      name: web-5f7b9c-abcde
      namespace: shop
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: web
    name: web-x7k2p
    namespace: shop
  ports:
  - name: http
    port: 8080
    protocol: TCP
kind: List
metadata:
  resourceVersion: ""
"#;

    #[test]
    fn kubectl_yaml_list_loads_into_the_index() {
        let h = IndexHandle::new(NodeAddresses::default());
        let report = parse(p(), KUBECTL_YAML).expect("parses").feed(&h);
        assert_eq!(
            report,
            LoadReport {
                pods: 1,
                services: 1,
                endpoint_slices: 1,
                jobs: 0,
                skipped: [("v1 ConfigMap".to_owned(), 1)].into_iter().collect(),
            }
        );
        let idx = h.snapshot();
        let a = idx.attribute("10.96.0.20".parse().expect("ip"), Some(80));
        assert_eq!(a.service.as_deref(), Some("web"));
        assert_eq!(
            a.workload.map(|w| (w.kind, w.name)),
            Some(("Deployment".into(), "web".into()))
        );
        assert!(
            matches!(idx.lookup("10.244.1.5".parse().expect("ip"), 8080), IpOwner::Pod(p) if p.name == "web-5f7b9c-abcde")
        );
    }

    #[test]
    fn kubectl_json_list_and_multi_document_yaml_give_the_same_objects() {
        let yaml_docs: Value = serde_yaml_ng::from_str(KUBECTL_YAML).expect("yaml");
        let json = serde_json::to_string_pretty(&yaml_docs).expect("json");
        let from_json = parse(Path::new("inv.json"), &json).expect("json parses");
        let items = yaml_docs["items"].as_array().expect("items");
        let multi: String = items
            .iter()
            .map(|i| format!("---\n{}", serde_yaml_ng::to_string(i).expect("yaml")))
            .collect();
        let from_multi = parse(p(), &multi).expect("multi-document parses");
        for o in [&from_json, &from_multi] {
            assert_eq!(
                (
                    o.pods.len(),
                    o.services.len(),
                    o.endpoint_slices.len(),
                    o.jobs.len()
                ),
                (1, 1, 1, 0)
            );
            assert_eq!(o.skipped.get("v1 ConfigMap"), Some(&1));
        }
        assert_eq!(from_json.pods, from_multi.pods);
    }

    #[test]
    fn a_typed_list_may_omit_item_kinds() {
        let text = r#"{"apiVersion": "v1", "kind": "PodList", "items": [
            {"metadata": {"name": "a", "namespace": "x"}, "status": {"podIP": "10.244.0.9"}}]}"#;
        let o = parse(p(), text).expect("parses");
        assert_eq!(o.pods.len(), 1);
        // kubectl writes `kind` after `items`; an empty or null list is no objects.
        let late = r#"{"items": [{"metadata": {"name": "s", "namespace": "x"}}], "apiVersion": "v1", "kind": "ServiceList"}"#;
        let o = parse(p(), late).expect("parses");
        assert_eq!((o.pods.len(), o.services.len()), (0, 1));
        for empty in [
            r#"{"kind": "List", "items": []}"#,
            r#"{"kind": "List", "items": null}"#,
            r#"{"kind": "List"}"#,
        ] {
            let o = parse(p(), empty).expect("parses");
            // Read as one object instead, the List itself would be skipped as a kind not used.
            let counts = (
                o.pods.len(),
                o.services.len(),
                o.endpoint_slices.len(),
                o.jobs.len(),
            );
            assert_eq!(counts, (0, 0, 0, 0), "{empty}");
            assert_eq!(o.skipped, BTreeMap::new(), "{empty}");
        }
    }

    fn err_text(text: &str) -> String {
        match parse(p(), text) {
            Ok(o) => panic!("expected an error, got {o:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_input_names_file_item_kind_name_and_field() {
        let bad_port = KUBECTL_YAML.replace("port: 80\n", "port: eighty\n");
        assert_eq!(
            err_text(&bad_port),
            "inventory file inv.yaml: item 2 (Service shop/web): spec.ports[0].port: invalid type: string \"eighty\", expected i32"
        );
        assert_eq!(
            err_text("kind: List\nitems:\n- metadata: {name: a}\n"),
            "inventory file inv.yaml: item 0 (? a): has no `kind`"
        );
        assert_eq!(
            err_text("kind: List\nitems: 3\n"),
            "inventory file inv.yaml: kind List: `items` is a number, expected a list"
        );
        assert_eq!(
            err_text("---\nkind: Pod\napiVersion: v1\nmetadata: {name: a}\n---\n- 1\n"),
            "inventory file inv.yaml: document 2 object (? ?): is a list, expected an object"
        );
        assert!(
            err_text("kind: [unclosed\n")
                .starts_with("inventory file inv.yaml is not valid YAML: document 1:")
        );
        assert!(err_text("{\"kind\": ").starts_with("inventory file inv.yaml is not valid JSON:"));
        // JSON lists are read item by item from the text: the same messages.
        assert_eq!(
            err_text(r#"{"items": 3, "kind": "List"}"#),
            "inventory file inv.yaml: kind List: `items` is a number, expected a list"
        );
        assert_eq!(
            err_text(
                r#"{"items": [{"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "a"}}, {"metadata": {"name": "b"}}], "kind": "List"}"#
            ),
            "inventory file inv.yaml: item 1 (? b): has no `kind`"
        );
        assert_eq!(
            err_text(
                r#"{"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "a"}, "spec": 3}"#
            ),
            "inventory file inv.yaml: object (Pod a): spec: invalid type: integer `3`, expected PodSpec"
        );
        assert!(
            err_text(r#"{"kind": "List", "items": [{"kind": "Pod",]}"#)
                .starts_with("inventory file inv.yaml is not valid JSON:")
        );
        assert_eq!(
            err_text("\n---\n"),
            "inventory file inv.yaml: no Kubernetes objects in the file"
        );
        let e = load_file(
            Path::new("/nonexistent/inv.yaml"),
            &IndexHandle::new(NodeAddresses::default()),
        )
        .expect_err("missing file");
        assert!(
            e.to_string()
                .starts_with("cannot read inventory file /nonexistent/inv.yaml: "),
            "{e}"
        );
    }

    #[test]
    fn arbitrary_garbage_never_panics() {
        for text in [
            "",
            "null",
            "42",
            "[1,2]",
            "kind: 5",
            "kind: List\nitems: [null, 1, {}]",
            "\u{0}\u{1}",
            "{\"items\": {}}",
        ] {
            let _ = parse(p(), text);
        }
    }
}
