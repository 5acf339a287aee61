//! A small XML reader for ELBv2 Query API answers, and the answers parsed into plain data so
//! that two endpoints (the rig's and moto's) can be compared.

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Element {
    pub name: String,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of the descendant at `path` (element names separated by `/`).
    pub fn text_at(&self, path: &str) -> Option<&str> {
        path.split('/')
            .try_fold(self, |e, n| e.child(n))
            .map(|e| e.text.as_str())
    }

    pub fn members<'a>(&'a self, path: &str) -> Vec<&'a Element> {
        path.split('/')
            .try_fold(self, |e, n| e.child(n))
            .map(|e| e.children.iter().filter(|c| c.name == "member").collect())
            .unwrap_or_default()
    }
}

/// Parses a document (declaration, elements, attributes ignored, text with the five predefined
/// entities). Enough for AWS Query answers, which use nothing else.
pub fn parse(doc: &str) -> Result<Element, String> {
    let mut p = Parser {
        s: doc.as_bytes(),
        i: 0,
    };
    p.skip_prolog();
    let e = p.element()?;
    Ok(e)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn starts(&self, t: &str) -> bool {
        self.s[self.i..].starts_with(t.as_bytes())
    }

    fn skip_past(&mut self, t: &str) -> Result<(), String> {
        while self.i < self.s.len() {
            if self.starts(t) {
                self.i += t.len();
                return Ok(());
            }
            self.i += 1;
        }
        Err(format!("unterminated construct, expected {t}"))
    }

    fn skip_prolog(&mut self) {
        loop {
            self.skip_ws();
            if self.starts("<?") {
                let _ = self.skip_past("?>");
            } else if self.starts("<!--") {
                let _ = self.skip_past("-->");
            } else {
                return;
            }
        }
    }

    fn name(&mut self) -> String {
        let start = self.i;
        while self.i < self.s.len()
            && !self.s[self.i].is_ascii_whitespace()
            && !matches!(self.s[self.i], b'>' | b'/')
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn element(&mut self) -> Result<Element, String> {
        if !self.starts("<") {
            return Err(format!("expected an element at byte {}", self.i));
        }
        self.i += 1;
        let name = self.name();
        // Attributes (xmlns) are skipped; quoted values may contain '>'.
        let mut quote = None;
        while self.i < self.s.len() {
            let c = self.s[self.i];
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None if c == b'>' || (c == b'/' && self.s.get(self.i + 1) == Some(&b'>')) => break,
                None => {}
            }
            self.i += 1;
        }
        if self.starts("/>") {
            self.i += 2;
            return Ok(Element {
                name,
                ..Default::default()
            });
        }
        self.i += 1;
        let mut e = Element {
            name,
            ..Default::default()
        };
        loop {
            if self.i >= self.s.len() {
                return Err(format!("unterminated element {}", e.name));
            }
            if self.starts("</") {
                self.i += 2;
                let end = self.name();
                if end != e.name {
                    return Err(format!("mismatched </{end}> for <{}>", e.name));
                }
                self.skip_past(">")?;
                e.text = unescape(e.text.trim());
                return Ok(e);
            }
            if self.starts("<!--") {
                self.skip_past("-->")?;
            } else if self.starts("<") {
                e.children.push(self.element()?);
            } else {
                e.text.push(self.s[self.i] as char);
                self.i += 1;
            }
        }
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A Query API answer reduced to what a client acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// DescribeTargetHealth: (id, port, state, reason) per target, sorted.
    TargetHealth(Vec<(String, u16, String, Option<String>)>),
    /// DescribeTargetGroups / CreateTargetGroup: (name, port, target type, interval, healthy threshold) per group.
    TargetGroups(Vec<(String, u16, String, u32, u32)>),
    /// A result element with nothing a client reads (RegisterTargets, DeregisterTargets).
    Done(String),
    /// An ErrorResponse: HTTP status, Type, Code.
    Error(u16, String, String),
}

pub fn parse_answer(status: u16, body: &str) -> Result<Answer, String> {
    let root = parse(body)?;
    if root.name == "ErrorResponse" {
        return Ok(Answer::Error(
            status,
            root.text_at("Error/Type").unwrap_or_default().to_string(),
            root.text_at("Error/Code").unwrap_or_default().to_string(),
        ));
    }
    let action = root
        .name
        .strip_suffix("Response")
        .ok_or_else(|| format!("unexpected root {}", root.name))?;
    let result = root
        .child(&format!("{action}Result"))
        .ok_or_else(|| format!("no {action}Result"))?;
    match action {
        "DescribeTargetHealth" => {
            let mut targets: Vec<_> = result
                .members("TargetHealthDescriptions")
                .into_iter()
                .map(|m| {
                    (
                        m.text_at("Target/Id").unwrap_or_default().to_string(),
                        m.text_at("Target/Port")
                            .and_then(|p| p.parse().ok())
                            .unwrap_or(0),
                        m.text_at("TargetHealth/State")
                            .unwrap_or_default()
                            .to_string(),
                        m.text_at("TargetHealth/Reason").map(String::from),
                    )
                })
                .collect();
            targets.sort();
            Ok(Answer::TargetHealth(targets))
        }
        "DescribeTargetGroups" | "CreateTargetGroup" => Ok(Answer::TargetGroups(
            result
                .members("TargetGroups")
                .into_iter()
                .map(|m| {
                    let num = |p: &str| m.text_at(p).and_then(|v| v.parse().ok()).unwrap_or(0);
                    (
                        m.text_at("TargetGroupName").unwrap_or_default().to_string(),
                        num("Port") as u16,
                        m.text_at("TargetType").unwrap_or_default().to_string(),
                        num("HealthCheckIntervalSeconds"),
                        num("HealthyThresholdCount"),
                    )
                })
                .collect(),
        )),
        other => Ok(Answer::Done(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_describe_target_health_answer_as_moto_sends_it() {
        let body = r#"<DescribeTargetHealthResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"><DescribeTargetHealthResult><TargetHealthDescriptions><member><Target><Id>10.0.0.9</Id><Port>8080</Port></Target><HealthCheckPort>traffic-port</HealthCheckPort><TargetHealth><State>unavailable</State><Reason>Target.NotRegistered</Reason><Description>Target is not registered</Description></TargetHealth></member></TargetHealthDescriptions></DescribeTargetHealthResult><ResponseMetadata><RequestId>wuqE</RequestId></ResponseMetadata></DescribeTargetHealthResponse>"#;
        assert_eq!(
            parse_answer(200, body).unwrap(),
            Answer::TargetHealth(vec![(
                "10.0.0.9".into(),
                8080,
                "unavailable".into(),
                Some("Target.NotRegistered".into())
            )])
        );
        let empty = r#"<?xml version="1.0"?><DescribeTargetHealthResponse><DescribeTargetHealthResult><TargetHealthDescriptions/></DescribeTargetHealthResult></DescribeTargetHealthResponse>"#;
        assert_eq!(
            parse_answer(200, empty).unwrap(),
            Answer::TargetHealth(vec![])
        );
    }

    #[test]
    fn parses_errors_and_entities() {
        let body = r#"<ErrorResponse xmlns="x"><Error><Type>Sender</Type><Code>TargetGroupNotFound</Code><Message>a &amp; b</Message></Error><RequestId>r</RequestId></ErrorResponse>"#;
        assert_eq!(
            parse_answer(400, body).unwrap(),
            Answer::Error(400, "Sender".into(), "TargetGroupNotFound".into())
        );
        assert_eq!(parse(body).unwrap().text_at("Error/Message"), Some("a & b"));
        assert!(parse("<a><b></a>").is_err());
    }
}
