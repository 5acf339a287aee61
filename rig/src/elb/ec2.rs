//! The little of EC2's Query API that the AWS Load Balancer Controller calls for IP-mode
//! TargetGroupBindings, answered the way EC2 answers (`Version=2016-11-15`, `item` lists,
//! `Response/Errors` on failure): `DescribeVpcs` (the rig's VPC, whose CIDR holds the pod CIDR:
//! the controller asks before each RegisterTargets whether a pod IP is inside the VPC) and
//! `DescribeSecurityGroups` (the cluster's security group, tagged `kubernetes.io/cluster/NAME`,
//! which the controller's networking reconciler lists on every reconcile). Read-only and fixed:
//! the rig's account has one VPC and one security group. Not throttled (EC2's own buckets are
//! larger than ELBv2's and nothing here comes near them).

use super::xml::escape;
use super::{ACCOUNT, VPC_ID};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

/// The EC2 API version the SDKs send.
pub const VERSION: &str = "2016-11-15";
const NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";
/// The cluster name the rig's resources are tagged for (`kubernetes.io/cluster/rig`) and the
/// AWS Load Balancer Controller is started with (`--cluster-name`).
pub const CLUSTER_NAME: &str = "rig";
/// The cluster's security group in [`VPC_ID`].
pub const SECURITY_GROUP_ID: &str = "sg-0a1b2c3d4e5f60719";
const VPC_CIDR_ASSOCIATION: &str = "vpc-cidr-assoc-0a1b2c3d4e5f6071a";

/// One resource: the values each filter name matches, and its tags.
struct Resource {
    fields: Vec<(&'static str, String)>,
    tags: Vec<(String, String)>,
}

impl Resource {
    fn field(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// Whether the resource passes filter `name` with any of `values` (EC2: filters AND,
    /// values OR); an unknown filter name is EC2's `InvalidParameterValue`.
    fn passes(&self, name: &str, values: &[String]) -> Result<bool, Ec2Error> {
        let any = |v: &str| values.iter().any(|x| x == v);
        if let Some(key) = name.strip_prefix("tag:") {
            return Ok(self.tags.iter().any(|(k, v)| k == key && any(v)));
        }
        if name == "tag-key" {
            return Ok(self.tags.iter().any(|(k, _)| any(k)));
        }
        match self.fields.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => Ok(any(v)),
            None => Err(Ec2Error::new(
                "InvalidParameterValue",
                format!("The filter '{name}' is invalid"),
            )),
        }
    }

    fn tag_set(&self) -> String {
        let items: String = self
            .tags
            .iter()
            .map(|(k, v)| {
                format!(
                    "<item><key>{}</key><value>{}</value></item>",
                    escape(k),
                    escape(v)
                )
            })
            .collect();
        format!("<tagSet>{items}</tagSet>")
    }
}

fn cluster_tag() -> (String, String) {
    (
        format!("kubernetes.io/cluster/{CLUSTER_NAME}"),
        "owned".into(),
    )
}

fn vpc() -> Resource {
    let cidr = crate::netns::POD_CIDR.to_string();
    Resource {
        fields: vec![
            ("vpc-id", VPC_ID.into()),
            ("cidr", cidr.clone()),
            ("cidr-block-association.cidr-block", cidr),
            (
                "cidr-block-association.association-id",
                VPC_CIDR_ASSOCIATION.into(),
            ),
            ("cidr-block-association.state", "associated".into()),
            ("state", "available".into()),
            ("owner-id", ACCOUNT.into()),
            ("is-default", "false".into()),
        ],
        tags: vec![("Name".into(), CLUSTER_NAME.into()), cluster_tag()],
    }
}

fn security_group() -> Resource {
    let name = format!("eks-cluster-sg-{CLUSTER_NAME}");
    Resource {
        fields: vec![
            ("group-id", SECURITY_GROUP_ID.into()),
            ("group-name", name),
            ("vpc-id", VPC_ID.into()),
            ("owner-id", ACCOUNT.into()),
            ("description", "EKS created security group".into()),
        ],
        tags: vec![cluster_tag()],
    }
}

#[derive(Debug, PartialEq)]
pub struct Ec2Error {
    pub code: &'static str,
    pub message: String,
}

impl Ec2Error {
    fn new(code: &'static str, message: String) -> Self {
        Self { code, message }
    }
}

fn indexed(params: &HashMap<String, String>, prefix: &str) -> Vec<String> {
    (1..=1000)
        .map_while(|i| params.get(&format!("{prefix}.{i}")).cloned())
        .collect()
}

/// `Filter.N.Name` with its `Filter.N.Value.M`.
fn filters(params: &HashMap<String, String>) -> Vec<(String, Vec<String>)> {
    (1..=50)
        .map_while(|i| {
            let name = params.get(&format!("Filter.{i}.Name"))?;
            Some((name.clone(), indexed(params, &format!("Filter.{i}.Value"))))
        })
        .collect()
}

/// The resources of `all` with the ids asked for (`ids`; a missing one is `not_found`) that
/// pass every filter.
fn select(
    all: Vec<Resource>,
    id_field: &str,
    ids: &[String],
    params: &HashMap<String, String>,
    not_found: impl Fn(&str) -> Ec2Error,
) -> Result<Vec<Resource>, Ec2Error> {
    if let Some(missing) = ids
        .iter()
        .find(|id| !all.iter().any(|r| r.field(id_field) == id.as_str()))
    {
        return Err(not_found(missing));
    }
    let filters = filters(params);
    let mut out = Vec::new();
    for r in all {
        if !ids.is_empty() && !ids.iter().any(|id| r.field(id_field) == id.as_str()) {
            continue;
        }
        let mut pass = true;
        for (name, values) in &filters {
            pass &= r.passes(name, values)?;
        }
        if pass {
            out.push(r);
        }
    }
    Ok(out)
}

fn vpc_item(r: &Resource) -> String {
    let cidr = escape(r.field("cidr"));
    format!(
        "<item><vpcId>{}</vpcId><ownerId>{}</ownerId><state>available</state><cidrBlock>{cidr}</cidrBlock>\
<cidrBlockAssociationSet><item><cidrBlock>{cidr}</cidrBlock><associationId>{VPC_CIDR_ASSOCIATION}</associationId>\
<cidrBlockState><state>associated</state></cidrBlockState></item></cidrBlockAssociationSet>\
<dhcpOptionsId>dopt-0a1b2c3d4e5f6071b</dhcpOptionsId><instanceTenancy>default</instanceTenancy><isDefault>false</isDefault>{}</item>",
        escape(r.field("vpc-id")),
        escape(r.field("owner-id")),
        r.tag_set()
    )
}

fn security_group_item(r: &Resource) -> String {
    let id = r.field("group-id");
    format!(
        "<item><ownerId>{}</ownerId><groupId>{}</groupId><groupName>{}</groupName><groupDescription>{}</groupDescription>\
<vpcId>{}</vpcId><securityGroupArn>arn:aws:ec2:{}:{ACCOUNT}:security-group/{}</securityGroupArn>\
<ipPermissions/><ipPermissionsEgress/>{}</item>",
        escape(r.field("owner-id")),
        escape(id),
        escape(r.field("group-name")),
        escape(r.field("description")),
        escape(r.field("vpc-id")),
        super::REGION,
        escape(id),
        r.tag_set()
    )
}

/// The answer to EC2 action `action` with `params`.
pub fn answer(action: &str, params: &HashMap<String, String>) -> Result<String, Ec2Error> {
    let (set, items) = match action {
        "DescribeVpcs" => {
            let vpcs = select(
                vec![vpc()],
                "vpc-id",
                &indexed(params, "VpcId"),
                params,
                |id| {
                    Ec2Error::new(
                        "InvalidVpcID.NotFound",
                        format!("The vpc ID '{id}' does not exist"),
                    )
                },
            )?;
            ("vpcSet", vpcs.iter().map(vpc_item).collect::<String>())
        }
        "DescribeSecurityGroups" => {
            let groups = select(
                vec![security_group()],
                "group-id",
                &indexed(params, "GroupId"),
                params,
                |id| {
                    Ec2Error::new(
                        "InvalidGroup.NotFound",
                        format!("The security group '{id}' does not exist"),
                    )
                },
            )?;
            (
                "securityGroupInfo",
                groups.iter().map(security_group_item).collect::<String>(),
            )
        }
        other => {
            tracing::warn!(action = other, "EC2 call the rig does not answer");
            return Err(Ec2Error::new(
                "InvalidAction",
                format!("The action {other} is not valid for this web service."),
            ));
        }
    };
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{NS}\"><requestId>{}</requestId><{set}>{items}</{set}></{action}Response>",
        crate::time::uuid()
    ))
}

/// The HTTP answer: 200 with the document, or 400 with EC2's error shape.
pub fn dispatch(action: &str, params: &HashMap<String, String>) -> Response {
    let (status, body) = match answer(action, params) {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
                e.code,
                escape(&e.message),
                crate::time::uuid()
            ),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(doc: &str) -> crate::elb::xml::Element {
        crate::elb::xml::parse(doc).expect("well-formed XML")
    }

    #[test]
    fn describe_vpcs_by_id_gives_the_vpc_whose_cidr_holds_the_pod_cidr() {
        let doc = answer("DescribeVpcs", &params(&[("VpcId.1", VPC_ID)])).unwrap();
        let e = parse(&doc);
        let items = e.child("vpcSet").unwrap();
        assert_eq!(items.children.len(), 1);
        let vpc = &items.children[0];
        assert_eq!(vpc.text_at("vpcId"), Some(VPC_ID));
        assert_eq!(
            vpc.text_at("cidrBlockAssociationSet/item/cidrBlock"),
            Some(crate::netns::POD_CIDR)
        );
        assert_eq!(
            vpc.text_at("cidrBlockAssociationSet/item/cidrBlockState/state"),
            Some("associated")
        );
    }

    #[test]
    fn an_unknown_vpc_or_filter_is_an_error_as_in_ec2() {
        assert_eq!(
            answer("DescribeVpcs", &params(&[("VpcId.1", "vpc-00000000")])),
            Err(Ec2Error::new(
                "InvalidVpcID.NotFound",
                "The vpc ID 'vpc-00000000' does not exist".into()
            ))
        );
        assert_eq!(
            answer(
                "DescribeVpcs",
                &params(&[("Filter.1.Name", "colour"), ("Filter.1.Value.1", "red")])
            )
            .unwrap_err()
            .code,
            "InvalidParameterValue"
        );
        assert_eq!(
            answer("RunInstances", &params(&[])).unwrap_err().code,
            "InvalidAction"
        );
    }

    #[test]
    fn security_groups_filter_by_cluster_tag_and_vpc() {
        let tag = format!("tag:kubernetes.io/cluster/{CLUSTER_NAME}");
        let ours = answer(
            "DescribeSecurityGroups",
            &params(&[
                ("Filter.1.Name", &tag),
                ("Filter.1.Value.1", "owned"),
                ("Filter.1.Value.2", "shared"),
                ("Filter.2.Name", "vpc-id"),
                ("Filter.2.Value.1", VPC_ID),
            ]),
        )
        .unwrap();
        let e = parse(&ours);
        let groups = &e.child("securityGroupInfo").unwrap().children;
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].text_at("groupId"), Some(SECURITY_GROUP_ID));
        let other_cluster = answer(
            "DescribeSecurityGroups",
            &params(&[
                ("Filter.1.Name", "tag:kubernetes.io/cluster/other"),
                ("Filter.1.Value.1", "owned"),
            ]),
        )
        .unwrap();
        assert!(
            parse(&other_cluster)
                .child("securityGroupInfo")
                .unwrap()
                .children
                .is_empty()
        );
    }
}
