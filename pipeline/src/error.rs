//! Spec errors that point at the file, line and field.

use std::fmt;

use serde_saphyr::{Location, Spanned};

/// One problem in a spec, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: String,
    /// 1-based; 0 when the place is not known (e.g. an I/O error).
    pub line: u64,
    pub column: u64,
    /// Path of the field, e.g. `silver[0].from`; empty for YAML syntax errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a spec; validation reports them all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "invalid pipeline spec ({n} error{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Collects errors for one file while validation walks the spec.
pub(crate) struct Errors<'a> {
    file: &'a str,
    pub(crate) found: Vec<SpecError>,
}

impl<'a> Errors<'a> {
    pub(crate) fn new(file: &'a str) -> Self {
        Self {
            file,
            found: Vec::new(),
        }
    }

    pub(crate) fn at(&mut self, loc: Location, field: impl Into<String>, msg: impl Into<String>) {
        self.found.push(SpecError {
            file: self.file.to_string(),
            line: loc.line(),
            column: loc.column(),
            field: field.into(),
            message: msg.into(),
        });
    }

    /// An error about a spanned value.
    pub(crate) fn on<T>(
        &mut self,
        v: &Spanned<T>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) {
        self.at(v.referenced, field, msg);
    }
}
