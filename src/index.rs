//! The in-memory view of the cluster that both halves read: bindings, services, pods and
//! namespace settings (opt-in, preStop sleep annotation), indexed by namespace.
//!
//! A pure state machine (`apply`/`delete`/`replace`), fed by the watchers in `cache` and
//! unit-tested without an API server.
//!
//! The webhook's question (which gates for these labels) is answered from a selector index
//! kept beside the objects, so its cost follows the pod's labels and the Services that could
//! select it, not the number of bindings and Services in the namespace.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::domain::{Binding, Labels, NamespaceSettings, Pod, Service, TargetType, gate_type};

#[derive(Debug, Default)]
struct Namespace {
    bindings: BTreeMap<String, Binding>,
    services: HashMap<String, Service>,
    pods: HashMap<String, Pod>,
    selectors: Selectors,
}

/// Every Service filed under one pair of its selector, and the `ip` bindings by the Service
/// they name. A Service selects a pod only if the pod carries every pair of its selector, so
/// the pod's own labels find every candidate: one lookup per label, then a full check of the
/// few Services filed there.
#[derive(Debug, Default)]
struct Selectors {
    /// Selector key → value → the Services filed under that pair.
    by_pair: HashMap<String, HashMap<String, Vec<String>>>,
    /// Service → the pair it is filed under (Services with an empty selector select nothing
    /// and are not filed).
    filed: HashMap<String, (String, String)>,
    /// Service name → the `ip` bindings naming it (the Service may not exist yet).
    bindings: HashMap<String, BTreeSet<String>>,
}

impl Selectors {
    /// Files `service` under the pair of its selector whose bucket is smallest now, so Services
    /// sharing a common pair (`part-of: shop`) spread over their distinguishing ones.
    fn file_service(&mut self, name: &str, service: &Service) {
        self.unfile_service(name);
        let size = |k: &str, v: &str| {
            self.by_pair
                .get(k)
                .and_then(|m| m.get(v))
                .map_or(0, Vec::len)
        };
        let Some((k, v)) = service
            .selector
            .iter()
            .min_by_key(|(k, v)| size(k.as_str(), v.as_str()))
        else {
            return;
        };
        self.by_pair
            .entry(k.clone())
            .or_default()
            .entry(v.clone())
            .or_default()
            .push(name.to_string());
        self.filed.insert(name.to_string(), (k.clone(), v.clone()));
    }

    fn unfile_service(&mut self, name: &str) {
        let Some((k, v)) = self.filed.remove(name) else {
            return;
        };
        let Some(values) = self.by_pair.get_mut(&k) else {
            return;
        };
        if let Some(names) = values.get_mut(&v) {
            names.retain(|n| n != name);
            if names.is_empty() {
                values.remove(&v);
            }
        }
        if values.is_empty() {
            self.by_pair.remove(&k);
        }
    }

    fn file_binding(&mut self, b: &Binding) {
        if b.target_type == TargetType::Ip {
            self.bindings
                .entry(b.service_name.clone())
                .or_default()
                .insert(b.name.clone());
        }
    }

    fn unfile_binding(&mut self, b: &Binding) {
        if let Some(names) = self.bindings.get_mut(&b.service_name) {
            names.remove(&b.name);
            if names.is_empty() {
                self.bindings.remove(&b.service_name);
            }
        }
    }
}

impl Namespace {
    fn apply_binding(&mut self, b: Binding) {
        if let Some(old) = self.bindings.get(&b.name) {
            self.selectors.unfile_binding(old);
        }
        self.selectors.file_binding(&b);
        self.bindings.insert(b.name.clone(), b);
    }
    fn delete_binding(&mut self, name: &str) {
        if let Some(old) = self.bindings.remove(name) {
            self.selectors.unfile_binding(&old);
        }
    }
    fn apply_service(&mut self, name: &str, s: Service) {
        self.selectors.file_service(name, &s);
        self.services.insert(name.to_string(), s);
    }
    fn delete_service(&mut self, name: &str) {
        if self.services.remove(name).is_some() {
            self.selectors.unfile_service(name);
        }
    }

    fn gates_for<L: Labels + ?Sized>(&self, labels: &L) -> Vec<String> {
        let sel = &self.selectors;
        let mut gates = Vec::new();
        for (k, v) in labels.pairs() {
            let Some(names) = sel.by_pair.get(k).and_then(|values| values.get(v)) else {
                continue;
            };
            for name in names {
                let selects = self.services.get(name).is_some_and(|s| s.selects(labels));
                if let Some(bindings) = sel.bindings.get(name).filter(|_| selects) {
                    gates.extend(bindings.iter().map(|b| gate_type(b)));
                }
            }
        }
        gates.sort();
        gates.dedup();
        gates
    }
}

/// Which watched kinds have listed once since start (pods: since this replica's controller
/// last became the leader; they are forgotten when it steps down).
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

/// What changed in the index since the controller last asked (`Index::take_changes`), so that
/// its passes follow what changed instead of reading every pod again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// A kind was (re-)listed: any gate may need deciding again.
    pub shape: bool,
    /// Namespaces where a binding or Service changed: their pods' gates may need deciding
    /// again (a binding only names a Service of its own namespace).
    pub namespaces: HashSet<String>,
    /// Pods applied with new content, or deleted, by namespace and name.
    pub pods: HashSet<(String, String)>,
}

/// Pods journaled at most between two passes; past that the journal says `shape` instead (a
/// full pass), so a replica whose controller does not read it keeps it small.
const MAX_JOURNALED_PODS: usize = 8192;

impl Changes {
    fn pod(&mut self, ns: &str, name: &str) {
        if self.shape {
            return;
        }
        if self.pods.len() >= MAX_JOURNALED_PODS {
            self.everything();
            return;
        }
        self.pods.insert((ns.to_string(), name.to_string()));
    }
    fn everything(&mut self) {
        self.shape = true;
        self.pods = HashSet::new();
        self.namespaces = HashSet::new();
    }
    fn namespace(&mut self, ns: &str) {
        if !self.shape {
            self.namespaces.insert(ns.to_string());
        }
    }
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
    changes: Changes,
    /// How many times a namespace already known turned opted in (the leader's pod watch lists
    /// again then: the pods of that namespace without our gates were not kept).
    opt_ins: u64,
    /// Every namespace seen and not deleted (a pod of a namespace not seen yet is kept until
    /// its namespace says whether it is opted in).
    known_namespaces: HashSet<String>,
}

impl Index {
    fn ns(&mut self, ns: &str) -> &mut Namespace {
        self.namespaces.entry(ns.to_string()).or_default()
    }

    /// What changed since the last call (the controller's journal).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    pub fn apply_binding(&mut self, ns: &str, b: Binding) {
        if self.binding(ns, &b.name) == Some(&b) {
            return;
        }
        self.changes.namespace(ns);
        self.ns(ns).apply_binding(b);
    }
    pub fn delete_binding(&mut self, ns: &str, name: &str) {
        if let Some(n) = self.namespaces.get_mut(ns)
            && n.bindings.contains_key(name)
        {
            self.changes.namespace(ns);
            n.delete_binding(name);
        }
    }
    pub fn apply_service(&mut self, ns: &str, name: &str, s: Service) {
        if self.service(ns, name) == Some(&s) {
            return;
        }
        self.changes.namespace(ns);
        self.ns(ns).apply_service(name, s);
    }
    pub fn delete_service(&mut self, ns: &str, name: &str) {
        if let Some(n) = self.namespaces.get_mut(ns)
            && n.services.contains_key(name)
        {
            self.changes.namespace(ns);
            n.delete_service(name);
        }
    }
    pub fn apply_pod(&mut self, ns: &str, name: &str, p: Pod) {
        if self.pod(ns, name) == Some(&p) {
            return;
        }
        self.changes.pod(ns, name);
        self.ns(ns).pods.insert(name.to_string(), p);
    }
    pub fn delete_pod(&mut self, ns: &str, name: &str) {
        if let Some(n) = self.namespaces.get_mut(ns)
            && n.pods.remove(name).is_some()
        {
            self.changes.pod(ns, name);
        }
    }
    pub fn apply_namespace(&mut self, name: &str, settings: NamespaceSettings) {
        let known = self.known_namespaces.contains(name);
        if !known {
            self.known_namespaces.insert(name.to_string());
        }
        if settings.opted_in {
            // A namespace created opted in needs no re-list: its pods were kept until now.
            if self.opted_in.insert(name.to_string()) && known {
                self.opt_ins += 1;
            }
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
        self.known_namespaces.remove(name);
        self.opted_in.remove(name);
        self.prestop_sleep.remove(name);
    }

    pub fn replace_bindings(&mut self, all: Vec<(String, Binding)>) {
        self.changes.everything();
        self.namespaces.values_mut().for_each(|n| {
            n.bindings.clear();
            n.selectors.bindings.clear();
        });
        all.into_iter()
            .for_each(|(ns, b)| self.apply_binding(&ns, b));
        self.synced.bindings = true;
    }
    pub fn replace_services(&mut self, all: Vec<(String, String, Service)>) {
        self.changes.everything();
        self.namespaces.values_mut().for_each(|n| {
            n.services.clear();
            n.selectors.by_pair.clear();
            n.selectors.filed.clear();
        });
        all.into_iter()
            .for_each(|(ns, name, s)| self.apply_service(&ns, &name, s));
        self.synced.services = true;
    }
    pub fn replace_pods(&mut self, all: Vec<(String, String, Pod)>) {
        self.changes.everything();
        self.namespaces.values_mut().for_each(|n| n.pods.clear());
        all.into_iter()
            .for_each(|(ns, name, p)| self.apply_pod(&ns, &name, p));
        self.synced.pods = true;
    }
    pub fn replace_namespaces(&mut self, all: Vec<(String, NamespaceSettings)>) {
        self.known_namespaces.clear();
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
                self.known_namespaces.retain(|name| keep("", name));
                self.opted_in.retain(|name| keep("", name));
                self.prestop_sleep.retain(|name, _| keep("", name));
            }
            _ => {
                let changes = &mut self.changes;
                for (ns, n) in &mut self.namespaces {
                    // Through `delete_*`, so the selector index follows.
                    let gone = |names: Vec<&String>| -> Vec<String> {
                        names
                            .into_iter()
                            .filter(|name| !keep(ns, name))
                            .cloned()
                            .collect()
                    };
                    match kind {
                        Kind::Binding => {
                            gone(n.bindings.keys().collect()).iter().for_each(|name| {
                                changes.everything();
                                n.delete_binding(name)
                            })
                        }
                        Kind::Service => {
                            gone(n.services.keys().collect()).iter().for_each(|name| {
                                changes.everything();
                                n.delete_service(name)
                            })
                        }
                        Kind::Pod => n.pods.retain(|name, _| {
                            let kept = keep(ns, name);
                            if !kept {
                                changes.pod(ns, name);
                            }
                            kept
                        }),
                        Kind::Namespace => {}
                    }
                }
            }
        }
    }

    /// Keeps only the pods of namespace `ns` for which `keep` holds.
    pub fn retain_pods_in(&mut self, ns: &str, keep: impl Fn(&Pod) -> bool) {
        let gone: Vec<String> = self.namespaces.get(ns).map_or_else(Vec::new, |n| {
            n.pods
                .iter()
                .filter(|(_, p)| !keep(p))
                .map(|(name, _)| name.clone())
                .collect()
        });
        // Through `delete_pod`, like every other change of a pod.
        for name in gone {
            self.delete_pod(ns, &name);
        }
    }

    /// Drops every pod and marks pods not listed: the replica no longer watches them.
    pub fn forget_pods(&mut self) {
        // Through `retain`, like a re-list that saw none; then the maps' room goes too.
        self.retain(Kind::Pod, |_, _| false);
        for n in self.namespaces.values_mut() {
            n.pods.shrink_to_fit();
        }
        self.synced.pods = false;
        self.compact();
    }

    /// How many times a namespace already known turned opted in so far.
    pub fn opt_ins(&self) -> u64 {
        self.opt_ins
    }

    /// Marks a kind as listed (also when there is nothing to list: its CRD is absent).
    pub fn mark_synced(&mut self, kind: Kind) {
        self.changes.everything();
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
    pub fn pod(&self, ns: &str, name: &str) -> Option<&Pod> {
        self.namespaces.get(ns)?.pods.get(name)
    }
    pub fn is_opted_in(&self, ns: &str) -> bool {
        self.opted_in.contains(ns)
    }
    /// Whether the namespace was seen (listed or watched) and not deleted.
    pub fn knows_namespace(&self, ns: &str) -> bool {
        self.known_namespaces.contains(ns)
    }
    /// The namespace's raw `readygate.io/prestop-sleep` annotation, if it has one.
    pub fn namespace_prestop_sleep(&self, ns: &str) -> Option<&str> {
        self.prestop_sleep.get(ns).map(String::as_str)
    }

    /// The gates a pod with these labels needs in `ns` (the webhook's question).
    pub fn gates_for<L: Labels + ?Sized>(&self, ns: &str, labels: &L) -> Vec<String> {
        self.namespaces
            .get(ns)
            .map_or_else(Vec::new, |n| n.gates_for(labels))
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

    /// The pods of one namespace, by name.
    pub fn pods_in(&self, ns: &str) -> impl Iterator<Item = (&str, &Pod)> {
        self.namespaces
            .get(ns)
            .into_iter()
            .flat_map(|n| n.pods.iter().map(|(name, p)| (name.as_str(), p)))
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

/// Test fixture shared by the modules that decide over an index: namespace `shop` (opted in
/// when `opted_in`) with Service `web` (selector `app=web`, port 80 named `http` → `target_port`)
/// and an IP-mode binding named `binding` on it, target group `arn`.
#[cfg(test)]
pub(crate) fn shop_index(
    opted_in: bool,
    binding: &str,
    arn: &str,
    target_port: crate::domain::PortRef,
) -> Index {
    use crate::domain::{NamespaceSettings, PortRef, ServicePort, TargetType};
    let mut ix = Index::default();
    if opted_in {
        ix.apply_namespace("shop", NamespaceSettings::opted_in());
    }
    ix.apply_service(
        "shop",
        "web",
        Service {
            selector: [("app".to_string(), "web".to_string())].into(),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(target_port),
            }],
        },
    );
    ix.apply_binding(
        "shop",
        Binding {
            name: binding.into(),
            target_group_arn: arn.into(),
            target_type: TargetType::Ip,
            service_name: "web".into(),
            service_port: PortRef::Number(80),
            ip_family: Default::default(),
            aws_controller: false,
        },
    );
    ix
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
            aws_controller: false,
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

    /// A small universe, so random objects collide: the same names re-applied with other
    /// selectors and types, Services sharing pairs, bindings naming absent Services.
    mod random {
        use super::*;
        use crate::gates;
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        const NAMESPACES: [&str; 2] = ["a", "b"];
        const KEYS: [&str; 3] = ["app", "tier", "zone"];
        const VALUES: [&str; 3] = ["x", "y", "z"];

        fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
            from[rng.random_range(0..from.len())]
        }
        fn pairs(rng: &mut StdRng, max: usize) -> BTreeMap<String, String> {
            (0..rng.random_range(0..=max))
                .map(|_| (pick(rng, &KEYS).to_string(), pick(rng, &VALUES).to_string()))
                .collect()
        }
        fn service(rng: &mut StdRng) -> (String, Service) {
            let name = format!("s{}", rng.random_range(0..6));
            (
                name,
                Service {
                    selector: pairs(rng, 3),
                    ports: vec![],
                },
            )
        }
        fn binding(rng: &mut StdRng) -> Binding {
            Binding {
                name: format!("b{}", rng.random_range(0..8)),
                target_group_arn: "arn".into(),
                target_type: match rng.random_range(0..4) {
                    0 => TargetType::Instance,
                    1 => TargetType::Unspecified,
                    _ => TargetType::Ip,
                },
                service_name: format!("s{}", rng.random_range(0..7)),
                service_port: PortRef::Number(80),
                ip_family: Default::default(),
                aws_controller: false,
            }
        }

        /// Every label set over the universe: each key absent or with one of the values.
        fn every_label_set() -> Vec<BTreeMap<String, String>> {
            let mut sets = vec![BTreeMap::new()];
            for k in KEYS {
                sets = sets
                    .into_iter()
                    .flat_map(|set| {
                        let with: Vec<_> = VALUES
                            .iter()
                            .map(|v| {
                                let mut s = set.clone();
                                s.insert(k.to_string(), v.to_string());
                                s
                            })
                            .collect();
                        std::iter::once(set).chain(with).collect::<Vec<_>>()
                    })
                    .collect();
            }
            sets
        }

        /// The indexed answer equals the brute-force one for every namespace and label set,
        /// in both label shapes; the selector index holds exactly what the objects imply.
        fn check(ix: &Index, label_sets: &[BTreeMap<String, String>], step: usize) {
            for ns in NAMESPACES.iter().copied().chain(["absent"]) {
                let n = ix.namespaces.get(ns);
                for labels in label_sets {
                    let brute = n.map_or_else(Vec::new, |n| {
                        gates::gates_for(labels, n.bindings.values(), |s| n.services.get(s))
                    });
                    let as_pairs: Vec<(String, String)> = labels.clone().into_iter().collect();
                    assert_eq!(
                        ix.gates_for(ns, labels),
                        brute,
                        "step {step}, {ns}, {labels:?}"
                    );
                    assert_eq!(ix.gates_for(ns, as_pairs.as_slice()), brute, "step {step}");
                }
                let Some(n) = n else { continue };
                let sel = &n.selectors;
                let mut filed: Vec<&String> = sel.filed.keys().collect();
                filed.sort();
                let mut selecting: Vec<&String> = n
                    .services
                    .iter()
                    .filter(|(_, s)| !s.selector.is_empty())
                    .map(|(name, _)| name)
                    .collect();
                selecting.sort();
                assert_eq!(filed, selecting, "step {step}: filed Services");
                let filed_count: usize = sel
                    .by_pair
                    .values()
                    .flat_map(|m| m.values())
                    .map(Vec::len)
                    .sum();
                assert_eq!(
                    filed_count,
                    selecting.len(),
                    "step {step}: no stale buckets"
                );
                let mut by_service: HashMap<String, BTreeSet<String>> = HashMap::new();
                for b in n
                    .bindings
                    .values()
                    .filter(|b| b.target_type == TargetType::Ip)
                {
                    by_service
                        .entry(b.service_name.clone())
                        .or_default()
                        .insert(b.name.clone());
                }
                assert_eq!(sel.bindings, by_service, "step {step}: bindings by Service");
            }
        }

        #[test]
        fn indexed_gates_equal_brute_force_over_random_changes() {
            let label_sets = every_label_set();
            assert_eq!(label_sets.len(), 64);
            for seed in 0..20u64 {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut ix = Index::default();
                for step in 0..150 {
                    let ns = pick(&mut rng, &NAMESPACES);
                    match rng.random_range(0..20) {
                        0..=5 => ix.apply_binding(ns, binding(&mut rng)),
                        6..=11 => {
                            let (name, s) = service(&mut rng);
                            ix.apply_service(ns, &name, s)
                        }
                        12 | 13 => ix.delete_binding(ns, &binding(&mut rng).name),
                        14 | 15 => ix.delete_service(ns, &service(&mut rng).0),
                        16 => ix.replace_bindings(
                            (0..rng.random_range(0..6))
                                .map(|_| {
                                    (pick(&mut rng, &NAMESPACES).to_string(), binding(&mut rng))
                                })
                                .collect(),
                        ),
                        17 => ix.replace_services(
                            (0..rng.random_range(0..6))
                                .map(|_| {
                                    let (name, s) = service(&mut rng);
                                    (pick(&mut rng, &NAMESPACES).to_string(), name, s)
                                })
                                .collect(),
                        ),
                        18 => {
                            let (kind, salt) = if rng.random_bool(0.5) {
                                (Kind::Binding, rng.random_range(0..3))
                            } else {
                                (Kind::Service, rng.random_range(0..3))
                            };
                            // Keeps about two in three, by name.
                            ix.retain(kind, |ns, name| {
                                !(ns.len() + name.len() * 7 + name.as_bytes()[1] as usize + salt)
                                    .is_multiple_of(3)
                            });
                        }
                        _ => ix.compact(),
                    }
                    check(&ix, &label_sets, step);
                }
            }
        }

        #[test]
        fn services_sharing_a_pair_are_filed_under_their_distinct_one() {
            let mut ix = Index::default();
            for i in 0..100 {
                let selector = [
                    ("app.kubernetes.io/part-of".to_string(), "shop".to_string()),
                    ("app".to_string(), format!("app-{i}")),
                ]
                .into();
                ix.apply_service(
                    "shop",
                    &format!("app-{i}"),
                    Service {
                        selector,
                        ports: vec![],
                    },
                );
                ix.apply_binding("shop", b(&format!("tgb-{i}"), &format!("app-{i}")));
            }
            let sel = &ix.namespaces["shop"].selectors;
            let largest = sel
                .by_pair
                .values()
                .flat_map(|m| m.values())
                .map(Vec::len)
                .max();
            assert_eq!(largest, Some(1), "one candidate per pod label");
            let pod: BTreeMap<String, String> = [
                ("app.kubernetes.io/part-of".to_string(), "shop".to_string()),
                ("app".to_string(), "app-42".to_string()),
            ]
            .into();
            assert_eq!(
                ix.gates_for("shop", &pod),
                ["target-health.elbv2.k8s.aws/tgb-42"]
            );
        }
    }
}
