//! The in-memory view of the cluster that both halves read: bindings, services, pods and
//! namespace settings (opt-in, preStop sleep annotation), indexed by namespace.
//!
//! A pure state machine (`apply`/`delete`/`replace`), fed by the watchers in `cache` and
//! unit-tested without an API server.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::domain::{Binding, Labels, NamespaceSettings, Pod, Service};
use crate::gates;

#[derive(Debug, Default)]
struct Namespace {
    bindings: BTreeMap<String, Binding>,
    services: HashMap<String, Service>,
    pods: HashMap<String, Pod>,
}

/// Which watched kinds have listed once since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub bindings: bool,
    pub services: bool,
    pub pods: bool,
    pub namespaces: bool,
}

/// The kinds readygate watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Binding,
    Service,
    Pod,
    Namespace,
}

#[derive(Debug, Default)]
pub struct Index {
    namespaces: HashMap<String, Namespace>,
    /// Namespaces labelled for injection.
    opted_in: HashSet<String>,
    /// The raw `readygate.io/prestop-sleep` annotation of the namespaces that carry one (few:
    /// the others cost nothing).
    prestop_sleep: HashMap<String, String>,
    synced: Synced,
    /// The TargetGroupBinding CRD is not installed: no bindings exist.
    pub bindings_crd_missing: bool,
    /// The binding watch answers 404 but the CRD is not confirmed gone: the bindings are the
    /// last known ones. Says what happened, for `/readyz`.
    pub bindings_warning: Option<String>,
}

impl Index {
    fn ns(&mut self, ns: &str) -> &mut Namespace {
        self.namespaces.entry(ns.to_string()).or_default()
    }

    pub fn apply_binding(&mut self, ns: &str, b: Binding) {
        self.ns(ns).bindings.insert(b.name.clone(), b);
    }
    pub fn delete_binding(&mut self, ns: &str, name: &str) {
        if let Some(n) = self.namespaces.get_mut(ns) {
            n.bindings.remove(name);
        }
    }
    pub fn apply_service(&mut self, ns: &str, name: &str, s: Service) {
        self.ns(ns).services.insert(name.to_string(), s);
    }
    pub fn delete_service(&mut self, ns: &str, name: &str) {
        if let Some(n) = self.namespaces.get_mut(ns) {
            n.services.remove(name);
        }
    }
    pub fn apply_pod(&mut self, ns: &str, name: &str, p: Pod) {
        self.ns(ns).pods.insert(name.to_string(), p);
    }
    pub fn delete_pod(&mut self, ns: &str, name: &str) {
        if let Some(n) = self.namespaces.get_mut(ns) {
            n.pods.remove(name);
        }
    }
    pub fn apply_namespace(&mut self, name: &str, settings: NamespaceSettings) {
        if settings.opted_in {
            self.opted_in.insert(name.to_string());
        } else {
            self.opted_in.remove(name);
        }
        match settings.prestop_sleep {
            Some(value) => {
                self.prestop_sleep.insert(name.to_string(), value);
            }
            None => {
                self.prestop_sleep.remove(name);
            }
        }
    }
    pub fn delete_namespace(&mut self, name: &str) {
        self.opted_in.remove(name);
        self.prestop_sleep.remove(name);
    }

    pub fn replace_bindings(&mut self, all: Vec<(String, Binding)>) {
        self.namespaces
            .values_mut()
            .for_each(|n| n.bindings.clear());
        all.into_iter()
            .for_each(|(ns, b)| self.apply_binding(&ns, b));
        self.synced.bindings = true;
    }
    pub fn replace_services(&mut self, all: Vec<(String, String, Service)>) {
        self.namespaces
            .values_mut()
            .for_each(|n| n.services.clear());
        all.into_iter()
            .for_each(|(ns, name, s)| self.apply_service(&ns, &name, s));
        self.synced.services = true;
    }
    pub fn replace_pods(&mut self, all: Vec<(String, String, Pod)>) {
        self.namespaces.values_mut().for_each(|n| n.pods.clear());
        all.into_iter()
            .for_each(|(ns, name, p)| self.apply_pod(&ns, &name, p));
        self.synced.pods = true;
    }
    pub fn replace_namespaces(&mut self, all: Vec<(String, NamespaceSettings)>) {
        self.opted_in.clear();
        self.prestop_sleep.clear();
        all.into_iter()
            .for_each(|(name, settings)| self.apply_namespace(&name, settings));
        self.synced.namespaces = true;
    }
    /// Keeps only the objects of `kind` for which `keep(namespace, name)` holds (after a re-list
    /// applied in place: what it did not see is gone). Namespaces are named by `name`.
    pub fn retain(&mut self, kind: Kind, keep: impl Fn(&str, &str) -> bool) {
        match kind {
            Kind::Namespace => {
                self.opted_in.retain(|name| keep("", name));
                self.prestop_sleep.retain(|name, _| keep("", name));
            }
            _ => {
                for (ns, n) in &mut self.namespaces {
                    match kind {
                        Kind::Binding => n.bindings.retain(|name, _| keep(ns, name)),
                        Kind::Service => n.services.retain(|name, _| keep(ns, name)),
                        Kind::Pod => n.pods.retain(|name, _| keep(ns, name)),
                        Kind::Namespace => {}
                    }
                }
            }
        }
    }

    /// Marks a kind as listed (also when there is nothing to list: its CRD is absent).
    pub fn mark_synced(&mut self, kind: Kind) {
        match kind {
            Kind::Binding => self.synced.bindings = true,
            Kind::Service => self.synced.services = true,
            Kind::Pod => self.synced.pods = true,
            Kind::Namespace => self.synced.namespaces = true,
        }
    }

    pub fn synced(&self) -> Synced {
        self.synced
    }

    /// Drops namespaces left empty, so deleted namespaces do not accumulate.
    pub fn compact(&mut self) {
        self.namespaces
            .retain(|_, n| !(n.bindings.is_empty() && n.services.is_empty() && n.pods.is_empty()));
    }

    pub fn binding(&self, ns: &str, name: &str) -> Option<&Binding> {
        self.namespaces.get(ns)?.bindings.get(name)
    }
    pub fn service(&self, ns: &str, name: &str) -> Option<&Service> {
        self.namespaces.get(ns)?.services.get(name)
    }
    pub fn is_opted_in(&self, ns: &str) -> bool {
        self.opted_in.contains(ns)
    }
    /// The namespace's raw `readygate.io/prestop-sleep` annotation, if it has one.
    pub fn namespace_prestop_sleep(&self, ns: &str) -> Option<&str> {
        self.prestop_sleep.get(ns).map(String::as_str)
    }

    /// The gates a pod with these labels needs in `ns` (the webhook's question).
    pub fn gates_for<L: Labels + ?Sized>(&self, ns: &str, labels: &L) -> Vec<String> {
        match self.namespaces.get(ns) {
            Some(n) => gates::gates_for(labels, n.bindings.values(), |name| n.services.get(name)),
            None => Vec::new(),
        }
    }

    /// The bindings of a namespace, by name.
    pub fn bindings(&self, ns: &str) -> impl Iterator<Item = &Binding> {
        let mut all: Vec<&Binding> = self
            .namespaces
            .get(ns)
            .into_iter()
            .flat_map(|n| n.bindings.values())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter()
    }

    /// Every pod, with its namespace and name.
    pub fn pods(&self) -> impl Iterator<Item = (&str, &str, &Pod)> {
        self.namespaces.iter().flat_map(|(ns, n)| {
            n.pods
                .iter()
                .map(move |(name, p)| (ns.as_str(), name.as_str(), p))
        })
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        self.namespaces.values().fold((0, 0, 0), |(b, s, p), n| {
            (b + n.bindings.len(), s + n.services.len(), p + n.pods.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PortRef, TargetType};

    fn b(name: &str, svc: &str) -> Binding {
        Binding {
            name: name.into(),
            target_group_arn: "arn".into(),
            target_type: TargetType::Ip,
            service_name: svc.into(),
            service_port: PortRef::Number(80),
            ip_family: Default::default(),
        }
    }
    fn s(app: &str) -> Service {
        Service {
            selector: [("app".to_string(), app.to_string())].into(),
            ports: vec![],
        }
    }
    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_string(), app.to_string())].into()
    }

    #[test]
    fn gates_follow_applies_and_deletes() {
        let mut ix = Index::default();
        ix.apply_service("shop", "web", s("web"));
        assert!(ix.gates_for("shop", &labels("web")).is_empty());
        ix.apply_binding("shop", b("web-tgb", "web"));
        assert_eq!(
            ix.gates_for("shop", &labels("web")),
            ["target-health.elbv2.k8s.aws/web-tgb"]
        );
        // Namespaces do not leak into each other.
        assert!(ix.gates_for("other", &labels("web")).is_empty());
        ix.delete_service("shop", "web");
        assert!(ix.gates_for("shop", &labels("web")).is_empty());
        ix.apply_service("shop", "web", s("web"));
        ix.delete_binding("shop", "web-tgb");
        assert!(ix.gates_for("shop", &labels("web")).is_empty());
    }

    #[test]
    fn replace_drops_what_a_relist_no_longer_has() {
        let mut ix = Index::default();
        assert!(!ix.synced().bindings);
        ix.apply_binding("a", b("one", "web"));
        ix.apply_binding("b", b("two", "web"));
        ix.replace_bindings(vec![("b".into(), b("three", "web"))]);
        assert!(ix.synced().bindings);
        assert!(ix.binding("a", "one").is_none());
        assert!(ix.binding("b", "two").is_none());
        assert!(ix.binding("b", "three").is_some());
        ix.compact();
        assert_eq!(ix.counts(), (1, 0, 0));
    }

    #[test]
    fn retain_drops_what_a_relist_in_place_did_not_see() {
        let mut ix = Index::default();
        ix.apply_binding("a", b("one", "web"));
        ix.apply_binding("b", b("two", "web"));
        ix.apply_service("a", "web", s("web"));
        ix.apply_namespace("a", NamespaceSettings::opted_in());
        ix.apply_namespace("b", NamespaceSettings::opted_in());
        ix.retain(Kind::Binding, |ns, name| (ns, name) == ("b", "two"));
        ix.retain(Kind::Namespace, |_, name| name == "a");
        assert!(ix.binding("a", "one").is_none() && ix.binding("b", "two").is_some());
        assert!(ix.service("a", "web").is_some(), "other kinds untouched");
        assert!(ix.is_opted_in("a") && !ix.is_opted_in("b"));
    }

    #[test]
    fn namespaces_opt_in_and_out() {
        let mut ix = Index::default();
        ix.apply_namespace("shop", NamespaceSettings::opted_in());
        assert!(ix.is_opted_in("shop"));
        ix.apply_namespace("shop", NamespaceSettings::default());
        assert!(!ix.is_opted_in("shop"));
        ix.replace_namespaces(vec![("x".into(), NamespaceSettings::opted_in())]);
        assert!(ix.is_opted_in("x") && ix.synced().namespaces);
    }

    fn annotated(value: &str) -> NamespaceSettings {
        NamespaceSettings {
            opted_in: true,
            prestop_sleep: Some(value.into()),
        }
    }

    #[test]
    fn prestop_annotations_follow_applies_deletes_and_relists() {
        let mut ix = Index::default();
        ix.apply_namespace("shop", annotated("15s"));
        ix.apply_namespace("plain", NamespaceSettings::opted_in());
        assert_eq!(ix.namespace_prestop_sleep("shop"), Some("15s"));
        assert_eq!(ix.namespace_prestop_sleep("plain"), None);
        // Only namespaces that carry the annotation are stored.
        assert_eq!(ix.prestop_sleep.len(), 1);
        // The annotation removed, then the namespace deleted.
        ix.apply_namespace("shop", NamespaceSettings::opted_in());
        assert_eq!(ix.namespace_prestop_sleep("shop"), None);
        ix.apply_namespace("shop", annotated("off"));
        ix.delete_namespace("shop");
        assert!(ix.namespace_prestop_sleep("shop").is_none() && !ix.is_opted_in("shop"));
        // A re-list in place drops what it did not see; a wholesale one replaces everything.
        ix.apply_namespace("a", annotated("5s"));
        ix.apply_namespace("b", annotated("10s"));
        ix.retain(Kind::Namespace, |_, name| name == "b");
        assert_eq!(ix.namespace_prestop_sleep("a"), None);
        assert_eq!(ix.namespace_prestop_sleep("b"), Some("10s"));
        ix.replace_namespaces(vec![("c".into(), annotated("1m"))]);
        assert_eq!(ix.namespace_prestop_sleep("b"), None);
        assert_eq!(ix.namespace_prestop_sleep("c"), Some("1m"));
    }
}
