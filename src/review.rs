//! A cheap read of an AdmissionReview: what the webhook needs of it, parsed in one pass.
//!
//! kube-core's `AdmissionReview<DynamicObject>` flattens its type fields, so serde first copies
//! the whole document (the 4 KB pod included) into an intermediate tree, then converts it, and
//! the pod's `DynamicObject` keeps every field as `serde_json::Value`: most of an admission's
//! cost. Here the envelope has no flattening, the request is kube-core's own
//! `AdmissionRequest` (same fields, same validation), and the object keeps its typed metadata
//! but, of its spec, only what the patches read.
//!
//! The read is never more lenient than kube-core's: whatever it does not take (a `response`
//! in a request, a duplicate key it reads, a spec of an unexpected shape) is an error, and the
//! webhook then reads the body the full way, which answers exactly as it always did.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::TypeMeta;
use kube::core::admission::AdmissionRequest;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The parts of an admitted object the webhook reads: its metadata, typed as in
/// `DynamicObject`, and `data` holding `spec` with only `readinessGates`,
/// `terminationGracePeriodSeconds` and each container's `name` and `lifecycle`, so the gate
/// and preStop patches built from it are the ones built from the whole object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView {
    pub metadata: ObjectMeta,
    pub data: Value,
}

crate::cache::view_resource!(PodView, "Pod", "pods");

/// Reads the request of an AdmissionReview as `AdmissionReview::try_into` would give it, or
/// `None` when the body is anything this read does not take (then read it the full way).
pub fn request(body: &[u8]) -> Option<AdmissionRequest<PodView>> {
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    let mut request = envelope.request?;
    request.types = envelope.types;
    Some(request)
}

struct Envelope {
    types: TypeMeta,
    request: Option<AdmissionRequest<PodView>>,
}

/// Refuses a second occurrence of a key the read keeps (serde_json's `Value` keeps the last
/// one, kube-core's typed fields refuse it: neither is worth matching here).
fn once<E: de::Error>(seen: bool, key: &'static str) -> Result<(), E> {
    match seen {
        true => Err(E::duplicate_field(key)),
        false => Ok(()),
    }
}

/// A map key, borrowed from the body unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A visitor that takes only a map, read by `$body`.
macro_rules! map_visitor {
    ($name:ident, $out:ty, $expecting:literal, |$map:ident| $body:block) => {
        struct $name;
        impl<'de> Visitor<'de> for $name {
            type Value = $out;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($expecting)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut $map: A) -> Result<$out, A::Error> {
                $body
            }
        }
    };
}

map_visitor!(EnvelopeVisitor, Envelope, "an AdmissionReview", |map| {
    let (mut api_version, mut kind, mut request) = (None, None, None);
    while let Some(key) = map.next_key::<Key<'de>>()? {
        match key.0.as_ref() {
            "apiVersion" => {
                once(api_version.is_some(), "apiVersion")?;
                api_version = Some(map.next_value::<String>()?);
            }
            "kind" => {
                once(kind.is_some(), "kind")?;
                kind = Some(map.next_value::<String>()?);
            }
            "request" => {
                once(request.is_some(), "request")?;
                request = Some(map.next_value::<Option<AdmissionRequest<PodView>>>()?);
            }
            // A review carrying an answer is not a request the webhook has to read quickly.
            "response" => return Err(de::Error::custom("a response in the request")),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(Envelope {
        types: TypeMeta {
            api_version: api_version.ok_or_else(|| de::Error::missing_field("apiVersion"))?,
            kind: kind.ok_or_else(|| de::Error::missing_field("kind"))?,
        },
        request: request.flatten(),
    })
});

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EnvelopeVisitor)
    }
}

map_visitor!(PodVisitor, PodView, "an object", |map| {
    let (mut metadata, mut spec) = (None, None);
    while let Some(key) = map.next_key::<Key<'de>>()? {
        match key.0.as_ref() {
            "metadata" => {
                once(metadata.is_some(), "metadata")?;
                metadata = Some(map.next_value::<ObjectMeta>()?);
            }
            "spec" => {
                once(spec.is_some(), "spec")?;
                spec = Some(map.next_value::<Spec>()?.0);
            }
            // `DynamicObject` takes apiVersion and kind as they come and keeps the rest as
            // JSON: nothing there can fail, and the patches read none of it.
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    let mut data = Map::new();
    if let Some(spec) = spec {
        data.insert("spec".into(), Value::Object(spec));
    }
    Ok(PodView {
        metadata: metadata.unwrap_or_default(),
        data: Value::Object(data),
    })
});

impl<'de> Deserialize<'de> for PodView {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PodVisitor)
    }
}

/// A pod spec (an object; anything else is refused) stripped to what the patches read.
struct Spec(Map<String, Value>);

map_visitor!(SpecVisitor, Spec, "a pod spec object", |map| {
    let mut kept = Map::new();
    while let Some(key) = map.next_key::<Key<'de>>()? {
        match key.0.as_ref() {
            k @ ("readinessGates" | "terminationGracePeriodSeconds") => {
                let value = map.next_value::<Value>()?;
                if kept.insert(k.to_string(), value).is_some() {
                    return Err(de::Error::custom(format_args!("duplicate field `{k}`")));
                }
            }
            "containers" => {
                let containers = map.next_value::<Containers>()?.0;
                if kept.insert("containers".into(), containers).is_some() {
                    return Err(de::Error::duplicate_field("containers"));
                }
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(Spec(kept))
});

impl<'de> Deserialize<'de> for Spec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(SpecVisitor)
    }
}

/// `containers`: an array of objects (anything else is refused), each kept with its `name`
/// and `lifecycle` only, in order.
struct Containers(Value);

impl<'de> Deserialize<'de> for Containers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SeqVisitor;
        impl<'de> Visitor<'de> for SeqVisitor {
            type Value = Containers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of containers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Containers, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(Container(c)) = seq.next_element::<Container>()? {
                    out.push(Value::Object(c));
                }
                Ok(Containers(Value::Array(out)))
            }
        }
        d.deserialize_seq(SeqVisitor)
    }
}

struct Container(Map<String, Value>);

map_visitor!(ContainerVisitor, Container, "a container object", |map| {
    let mut kept = Map::new();
    while let Some(key) = map.next_key::<Key<'de>>()? {
        match key.0.as_ref() {
            k @ ("name" | "lifecycle") => {
                let value = map.next_value::<Value>()?;
                if kept.insert(k.to_string(), value).is_some() {
                    return Err(de::Error::custom(format_args!("duplicate field `{k}`")));
                }
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(Container(kept))
});

impl<'de> Deserialize<'de> for Container {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ContainerVisitor)
    }
}
