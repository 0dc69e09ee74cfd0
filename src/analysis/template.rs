//! MetricTemplate query rendering with Flagger's variables:
//! `{{ name }} {{ namespace }} {{ target }} {{ service }} {{ interval }} {{ variables.x }}`.
//!
//! Only plain variable references are supported (no Go template pipelines); anything
//! else inside `{{ }}` is an error naming it, so a typo fails validation instead of
//! producing a query that silently matches nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Error, Result};
use crate::duration::format_prometheus;

/// The values a MetricTemplate query can reference.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateVars {
    /// The Canary's name.
    pub name: String,
    pub namespace: String,
    /// The canary workload (`targetRef.name`).
    pub target: String,
    /// The apex Service name (`service.name`, default `targetRef.name`).
    pub service: String,
    /// The metric's `interval`, rendered in PromQL form (`1m`, `1h30m`).
    pub interval: Duration,
    /// The Canary metric's `templateVariables`.
    pub variables: BTreeMap<String, String>,
}

const OPEN: &str = "{{";
const CLOSE: &str = "}}";
const VARIABLES_PREFIX: &str = "variables.";

/// Replaces every `{{ key }}` (whitespace inside the braces optional).
pub fn render_template(template: &str, vars: &TemplateVars) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open_at) = rest.find(OPEN) {
        out.push_str(&rest[..open_at]);
        let after_open = &rest[open_at + OPEN.len()..];
        let close_at = after_open.find(CLOSE).ok_or_else(|| Error::BadTemplate {
            reason: format!(
                "`{{{{` at byte {} is never closed",
                template.len() - rest.len() + open_at
            ),
        })?;
        let key = after_open[..close_at].trim();
        out.push_str(&lookup(key, vars)?);
        rest = &after_open[close_at + CLOSE.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup(key: &str, vars: &TemplateVars) -> Result<String> {
    let value = match key {
        "" => {
            return Err(Error::BadTemplate {
                reason: "empty `{{ }}`".into(),
            })
        }
        "name" => vars.name.clone(),
        "namespace" => vars.namespace.clone(),
        "target" => vars.target.clone(),
        "service" => vars.service.clone(),
        "interval" => format_prometheus(vars.interval),
        _ => match key.strip_prefix(VARIABLES_PREFIX) {
            Some(variable) => {
                vars.variables
                    .get(variable)
                    .cloned()
                    .ok_or_else(|| Error::UnknownVariable {
                        name: key.to_string(),
                    })?
            }
            None => {
                return Err(Error::UnknownVariable {
                    name: key.to_string(),
                })
            }
        },
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> TemplateVars {
        TemplateVars {
            name: "podinfo".into(),
            namespace: "test".into(),
            target: "podinfo".into(),
            service: "podinfo-svc".into(),
            interval: Duration::from_secs(90),
            variables: BTreeMap::from([
                ("route".to_string(), "/api".to_string()),
                ("code".to_string(), "5..".to_string()),
            ]),
        }
    }

    #[test]
    fn renders_every_variable() {
        let cases = [
            ("{{ name }}", "podinfo"),
            ("{{namespace}}", "test"),
            ("{{   target\t}}", "podinfo"),
            ("{{ service }}", "podinfo-svc"),
            ("[{{ interval }}]", "[1m30s]"),
            ("{{ variables.route }}", "/api"),
            ("{{variables.code}}", "5.."),
            ("no variables at all", "no variables at all"),
            ("", ""),
            (
                r#"sum(rate(x{ns="{{ namespace }}",svc="{{ service }}"}[{{ interval }}]))"#,
                r#"sum(rate(x{ns="test",svc="podinfo-svc"}[1m30s]))"#,
            ),
            ("{{ name }}{{ name }}", "podinfopodinfo"),
            // A lone closing brace pair is not ours to judge.
            ("a }} b", "a }} b"),
            ("é{{ name }}ü", "épodinfoü"),
        ];
        for (template, want) in cases {
            assert_eq!(
                render_template(template, &vars()).as_deref(),
                Ok(want),
                "{template}"
            );
        }
    }

    #[test]
    fn unknown_variables_are_named() {
        let cases = [
            ("{{ nam }}", "nam"),
            ("{{ .name }}", ".name"),
            ("{{ variables.missing }}", "variables.missing"),
            ("{{ variables. }}", "variables."),
            ("{{ variables }}", "variables"),
            ("ok {{ name }} then {{ Target }}", "Target"),
        ];
        for (template, name) in cases {
            let err = render_template(template, &vars()).unwrap_err();
            assert_eq!(
                err,
                Error::UnknownVariable {
                    name: name.to_string()
                },
                "{template}"
            );
            assert!(err.to_string().contains(name));
        }
    }

    #[test]
    fn malformed_templates_are_errors() {
        for template in ["{{ name", "x {{", "{{}}", "{{   }}", "{{ name }} {{"] {
            let err = render_template(template, &vars()).unwrap_err();
            assert_eq!(err.label(), "bad_template", "{template}");
        }
    }
}
