//! Errors that name the field of the layout they are about.

use std::fmt;

/// One problem with one field, e.g. `raid[0].members: raid5 needs at least 3 members, got 2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field in the layout file: `disk[0].partition[2].size`, `bootloader.firmware`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a layout was refused: it did not parse, or some fields are wrong (all of them listed,
/// so an operator fixes a layout in one round).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// TOML syntax, an unknown key or a malformed value; the text names line and key.
    #[error("{0}")]
    Parse(String),
    #[error("{}", list(.0))]
    Invalid(Vec<FieldError>),
}

impl LayoutError {
    /// The field errors (empty for a parse error).
    pub fn fields(&self) -> &[FieldError] {
        match self {
            Self::Parse(_) => &[],
            Self::Invalid(errors) => errors,
        }
    }
}

impl From<FieldError> for LayoutError {
    fn from(e: FieldError) -> Self {
        Self::Invalid(vec![e])
    }
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
