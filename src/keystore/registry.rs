//! Which columns hold sealed values: each component declares its own, the rotation job and
//! `vault status` walk them all.
//!
//! The vault does not own those tables (the upstream token table belongs to `upstream`), so
//! a component that stores sealed values adds one [`SealedColumns`] to
//! [`crate::app::sealed_columns`]. Contract for such a column:
//! - it holds the envelope bytes as a BLOB (or NULL), exactly as [`vault::Sealer::seal`]
//!   returned them;
//! - the [`vault::Aad`] used to seal is `table`, the column's name, the row id column's value
//!   as text (integers in decimal) and the user id column's value;
//! - the row id never changes (it is in the associated data) and orders rows (`ORDER BY`).

use std::fmt;

/// One table's sealed columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedColumns {
    pub table: &'static str,
    pub id_column: &'static str,
    pub user_id_column: &'static str,
    pub columns: &'static [&'static str],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealed column registry: {0:?} is not a plain SQL identifier")]
pub struct RegistryError(pub String);

/// Every sealed column of the broker.
#[derive(Debug, Clone, Default)]
pub struct SealedRegistry {
    tables: Vec<SealedColumns>,
}

/// One sealed column, as the rotation job walks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedColumn {
    pub table: &'static str,
    pub id_column: &'static str,
    pub user_id_column: &'static str,
    pub column: &'static str,
}

impl fmt::Display for SealedColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.table, self.column)
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl SealedRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a table. Names are interpolated into SQL, so only plain identifiers are accepted.
    pub fn register(&mut self, table: SealedColumns) -> Result<(), RegistryError> {
        for name in [table.table, table.id_column, table.user_id_column]
            .into_iter()
            .chain(table.columns.iter().copied())
        {
            if !is_identifier(name) {
                return Err(RegistryError(name.to_owned()));
            }
        }
        self.tables.push(table);
        Ok(())
    }

    pub fn with(mut self, table: SealedColumns) -> Result<Self, RegistryError> {
        self.register(table)?;
        Ok(self)
    }

    pub fn columns(&self) -> impl Iterator<Item = SealedColumn> + '_ {
        self.tables.iter().flat_map(|table| {
            table.columns.iter().map(move |column| SealedColumn {
                table: table.table,
                id_column: table.id_column,
                user_id_column: table.user_id_column,
                column,
            })
        })
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_accepted() {
        let good = SealedColumns {
            table: "upstream_grants",
            id_column: "id",
            user_id_column: "user_id",
            columns: &["access_token", "refresh_token"],
        };
        let registry = SealedRegistry::new().with(good).unwrap();
        let names: Vec<String> = registry.columns().map(|c| c.to_string()).collect();
        assert_eq!(
            names,
            [
                "upstream_grants.access_token",
                "upstream_grants.refresh_token"
            ]
        );
        for bad in ["", "1abc", "a b", "t\"; DROP TABLE x; --", "a.b"] {
            let table = SealedColumns { table: bad, ..good };
            assert!(SealedRegistry::new().register(table).is_err(), "{bad:?}");
        }
    }
}
