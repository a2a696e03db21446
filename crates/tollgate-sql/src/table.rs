//! Names in the database: validated SQL identifiers for the state table, and the prefix of
//! a bound policy's rows.

use tollgate::{Error, Policy, StoreError};

/// The prefix of every row a backend bound to `policy` writes: `<namespace:><scope>:`, the
/// scope being the store's named scope or else [`tollgate::store::default_scope`] (the rule
/// of `tollgate::store::Store`, the same on every store).
pub(crate) fn key_prefix(namespace: &str, scope: Option<&str>, policy: &Policy) -> String {
    let scope = scope.map_or_else(|| tollgate::store::default_scope(policy), str::to_owned);
    format!("{namespace}{scope}:")
}

/// The longest table name accepted (PostgreSQL truncates identifiers at 63 bytes, and the
/// store derives function and index names such as `<table>_sliding_window` from it).
pub const MAX_TABLE_NAME_LEN: usize = 40;

/// The name of the table that holds key state: an SQL identifier checked at construction, so
/// it can never carry SQL into a statement.
///
/// Accepted: 1 to [`MAX_TABLE_NAME_LEN`] characters from `[A-Za-z0-9_]`, not starting with a
/// digit; PostgreSQL also accepts one schema qualifier (`schema.table`, same rule for both
/// parts). The name is always quoted in statements, so its case is kept.
///
/// ```
/// use tollgate_sql::TableName;
/// assert_eq!(TableName::new("tollgate_state").unwrap().as_str(), "tollgate_state");
/// assert!(TableName::new("limits; DROP TABLE users").is_err());
/// assert!(TableName::new("1abc").is_err());
/// assert!(TableName::new("").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

/// The default table name, `tollgate_state`.
pub const DEFAULT_TABLE_NAME: &str = "tollgate_state";

impl Default for TableName {
    fn default() -> Self {
        TableName {
            schema: None,
            name: DEFAULT_TABLE_NAME.to_string(),
        }
    }
}

fn valid_part(part: &str) -> bool {
    let mut chars = part.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    part.len() <= MAX_TABLE_NAME_LEN && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl TableName {
    /// Validates `name` (optionally `schema.name`).
    ///
    /// ```
    /// let t = tollgate_sql::TableName::new("limits.api_state").unwrap();
    /// assert_eq!(t.schema(), Some("limits"));
    /// assert_eq!(t.name(), "api_state");
    /// ```
    pub fn new(name: &str) -> Result<TableName, Error> {
        let invalid = |why: &str| {
            Error::Store(StoreError::new(
                "sql",
                format!("invalid table name {name:?}: {why}"),
            ))
        };
        let (schema, table) = match name.split_once('.') {
            Some((s, t)) => (Some(s), t),
            None => (None, name),
        };
        for part in schema.iter().chain([&table]) {
            if !valid_part(part) {
                return Err(invalid(&format!(
                    "each part must be 1-{MAX_TABLE_NAME_LEN} characters of A-Z, a-z, 0-9 or _, not starting with a digit"
                )));
            }
        }
        Ok(TableName {
            schema: schema.map(str::to_string),
            name: table.to_string(),
        })
    }

    /// The name as given (`schema.table` or `table`).
    ///
    /// ```
    /// assert_eq!(tollgate_sql::TableName::new("t").unwrap().as_str(), "t");
    /// ```
    pub fn as_str(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The schema qualifier, if any.
    ///
    /// ```
    /// assert_eq!(tollgate_sql::TableName::new("t").unwrap().schema(), None);
    /// ```
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The unqualified table name.
    ///
    /// ```
    /// assert_eq!(tollgate_sql::TableName::new("s.t").unwrap().name(), "t");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The quoted, qualified identifier of an object named `<table><suffix>` in the table's
    /// schema (`""` for the table itself).
    pub(crate) fn quoted(&self, suffix: &str) -> String {
        match &self.schema {
            Some(s) => format!("\"{s}\".\"{}{suffix}\"", self.name),
            None => format!("\"{}{suffix}\"", self.name),
        }
    }

    /// The quoted, unqualified name `<table><suffix>` (for index names).
    pub(crate) fn quoted_local(&self, suffix: &str) -> String {
        format!("\"{}{suffix}\"", self.name)
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl std::str::FromStr for TableName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TableName::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_injection_and_accepts_identifiers() {
        for bad in [
            "",
            "a b",
            "a\"b",
            "a;b",
            "a.b.c",
            ".a",
            "a.",
            "9a",
            "ä",
            &"x".repeat(MAX_TABLE_NAME_LEN + 1),
        ] {
            assert!(TableName::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "a",
            "_a",
            "Limits_2",
            "s.t",
            &"x".repeat(MAX_TABLE_NAME_LEN),
        ] {
            assert!(TableName::new(good).is_ok(), "{good:?} rejected");
        }
        assert_eq!(
            TableName::new("s.T").unwrap().quoted("_gcra"),
            "\"s\".\"T_gcra\""
        );
    }
}
