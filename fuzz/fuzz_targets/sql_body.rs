//! `POST /v1/sql` bodies: the first byte says whether the body is JSON, the rest is the
//! body. No panic reading it; an accepted request has SQL that is not blank, and SQL that
//! passes the server's shape check (`query/src/shape.rs`) goes through the parser DataFusion
//! uses (sqlparser, its dialect and recursion limit) without a panic, a stack overflow, or a
//! slow unit (run with `-timeout`: the first run found a 150-byte statement that took 42 s).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

#[allow(dead_code)]
#[path = "../../cloud-ingest/src/input.rs"]
mod input;

#[allow(dead_code)]
#[path = "../../query/src/shape.rs"]
mod shape;

/// DataFusion's default `sql_parser.recursion_limit`.
const RECURSION_LIMIT: usize = 50;

fuzz_target!(|data: &[u8]| {
    let Some((flags, body)) = data.split_first() else {
        return;
    };
    let query = input::SqlParams {
        sql: (flags & 2 != 0).then(|| "select 1".to_owned()),
        format: None,
    };
    let Ok(req) = input::sql_request(flags & 1 != 0, body, query) else {
        return;
    };
    assert!(!req.sql.trim().is_empty());
    if shape::check(&req.sql).is_err() {
        return;
    }
    let _ = Parser::new(&GenericDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(&req.sql)
        .and_then(|mut p| p.parse_statements());
});
