//! Fixed raw statements that are prepared once per connection.
//!
//! `diesel::sql_query` marks its statement unsafe to cache, so diesel-async
//! prepares it anew on every call: a Parse round trip, then parse, analysis
//! and planning in PostgreSQL each time (a third of the hot statements' time
//! in `pg_stat_statements` under load). A [`Cached`] statement's text never
//! changes — only its binds do — so it is safe to cache: the connection's
//! statement cache (keyed by the text) prepares it once, and PostgreSQL can
//! settle on a generic plan.
//!
//! Built like `diesel::sql_query`, but the binds go where they stand:
//! `Cached::new("SELECT … WHERE phone = ").bind::<Text, _>(phone).sql(" AND …")`.

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::QueryResult;

/// One bind value with its SQL type.
trait Bind: Send + Sync {
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

struct Value<ST, U>(U, PhantomData<fn() -> ST>);

impl<ST, U> Bind for Value<ST, U>
where
    Pg: HasSqlType<ST>,
    U: ToSql<ST, Pg> + Send + Sync,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, U>(&self.0)
    }
}

enum Part<'a> {
    Sql(&'static str),
    Bind(Box<dyn Bind + 'a>),
}

/// A raw statement of fixed text, prepared once per connection.
#[must_use]
pub struct Cached<'a> {
    parts: Vec<Part<'a>>,
}

impl<'a> Cached<'a> {
    pub fn new(sql: &'static str) -> Self {
        Self {
            parts: vec![Part::Sql(sql)],
        }
    }

    /// Appends SQL text (a constant: the text must not vary between calls).
    pub fn sql(mut self, sql: &'static str) -> Self {
        self.parts.push(Part::Sql(sql));
        self
    }

    /// Appends a bind parameter (`$n`) of SQL type `ST`.
    pub fn bind<ST, U>(mut self, value: U) -> Self
    where
        Pg: HasSqlType<ST>,
        U: ToSql<ST, Pg> + Send + Sync + 'a,
        ST: 'static,
    {
        self.parts
            .push(Part::Bind(Box::new(Value::<ST, U>(value, PhantomData))));
        self
    }
}

impl QueryFragment<Pg> for Cached<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        for part in &self.parts {
            match part {
                Part::Sql(s) => out.push_sql(s),
                Part::Bind(b) => b.push(&mut out)?,
            }
        }
        Ok(())
    }
}

impl QueryId for Cached<'_> {
    // No static id: the cache keys the statement by its text and bind types.
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Cached<'_> {
    type SqlType = Untyped;
}
