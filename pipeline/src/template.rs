//! Templated spec fields: a source's path, silver filters and column expressions, gold SQL
//! and check expressions may use the run's interval (`{{ ds }}`, see [`RunInterval`]).
//!
//! Fields are rendered after the YAML is read and before they are validated, so a
//! rendered SQL expression is checked like one written out. An unknown variable is an error
//! naming the field, not an empty string.

use minijinja::{Environment, UndefinedBehavior};
use serde_saphyr::Spanned;

use crate::error::Errors;
use crate::schedule::RunInterval;
use crate::spec::PipelineSpec;

/// Renders the templated fields of `spec` for `interval`. Returns the paths of sources as
/// written, for those that were templates: a file's identity is relative to the part of the
/// path before the template (see [`crate::Pipeline::source_root_template`]).
pub(crate) fn render(
    spec: &mut PipelineSpec,
    interval: &RunInterval,
    errors: &mut Errors,
) -> Vec<Option<String>> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let vars: std::collections::BTreeMap<_, _> = interval.variables().into_iter().collect();
    let mut render = |field: String, value: &mut Spanned<String>| {
        if !value.value.contains("{{") && !value.value.contains("{%") {
            return false;
        }
        match env.render_str(&value.value, &vars) {
            Ok(text) => value.value = text,
            Err(e) => {
                let known = vars.keys().copied().collect::<Vec<_>>().join(", ");
                let message = format!("template: {} (variables: {known})", e.kind());
                let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
                errors.on(value, field, format!("{message}{detail}"));
            }
        }
        true
    };
    let mut templates = Vec::new();
    for (i, source) in spec.sources.iter_mut().enumerate() {
        let Some(path) = &mut source.path else {
            templates.push(None);
            continue;
        };
        let written = path.value.clone();
        let templated = render(format!("sources[{i}].path"), path);
        templates.push(templated.then_some(written));
    }
    for (i, t) in spec.silver.iter_mut().enumerate() {
        for (j, f) in t.filters.iter_mut().enumerate() {
            render(format!("silver[{i}].filters[{j}]"), f);
        }
        for (j, c) in t.columns.iter_mut().enumerate() {
            if let Some(e) = &mut c.expr {
                render(format!("silver[{i}].columns[{j}].expr"), e);
            }
        }
        for (j, c) in t.checks.iter_mut().enumerate() {
            if let Some(e) = &mut c.expr {
                render(format!("silver[{i}].checks[{j}].expr"), e);
            }
        }
    }
    for (i, t) in spec.gold.iter_mut().enumerate() {
        render(format!("gold[{i}].sql"), &mut t.sql);
        for (j, c) in t.checks.iter_mut().enumerate() {
            if let Some(e) = &mut c.expr {
                render(format!("gold[{i}].checks[{j}].expr"), e);
            }
        }
    }
    templates
}
