//! The shape of a SQL text, checked before it is parsed, on every surface (HTTP, Postgres
//! wire, Flight SQL). sqlparser backtracks: a dotted name of many parts followed by a
//! subscript that does not parse (`x.y.x.y.….a[b c]`) costs time exponential in the parts
//! (20 parts: about 3 s of a worker thread; 30: hours), and so do unclosed nested calls
//! (`not(not(not(…`: 20 deep 2.3 s, 40 deep over a minute), and so do many subscripts after
//! short dotted names (166 bytes with eight `[`: 76 s; with four: 0.09 s). The fuzz target
//! `sql_body` found all three. The tokenizer is linear, so names are held to
//! [`MAX_NAME_PARTS`] parts, brackets to [`MAX_NESTING`] levels, `[` to [`MAX_SUBSCRIPTS`] in
//! a statement, and a text to [`MAX_SQL_BYTES`] and [`MAX_TOKENS`] before the parser sees
//! them. The parser stays exponential underneath: these caps hold the shapes found so far.
//!
//! Only `sqlparser` is used here: the fuzz crate compiles this file on its own.

use sqlparser::dialect::GenericDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// Parts of a dotted name at most (`catalog.schema.table.column` is four).
pub const MAX_NAME_PARTS: usize = 6;
/// Levels of `(`, `[` and `{` one inside another at most.
pub const MAX_NESTING: usize = 12;
/// `[` (subscripts, array literals) in one statement at most.
pub const MAX_SUBSCRIPTS: usize = 4;
/// Bytes of one SQL text at most.
pub const MAX_SQL_BYTES: usize = 1 << 20;
/// Tokens of one SQL text at most.
pub const MAX_TOKENS: usize = 100_000;

/// Whether `sql` is small enough and its names short enough to be parsed; the error says
/// which limit it broke. A text the tokenizer cannot read is left to the parser's error.
pub fn check(sql: &str) -> Result<(), String> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(format!("a statement is at most {MAX_SQL_BYTES} bytes"));
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(());
    };
    if tokens.len() > MAX_TOKENS {
        return Err(format!("a statement is at most {MAX_TOKENS} tokens"));
    }
    // Dots in a row with at most one token between them: the parts of one name.
    if tokens.iter().filter(|t| **t == Token::LBracket).count() > MAX_SUBSCRIPTS {
        return Err(format!(
            "a statement has at most {MAX_SUBSCRIPTS} subscripts or array literals ('[')"
        ));
    }
    let (mut dots, mut since_dot, mut depth) = (0usize, 0usize, 0usize);
    for t in tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))) {
        match t {
            Token::LParen | Token::LBracket | Token::LBrace => depth += 1,
            Token::RParen | Token::RBracket | Token::RBrace => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_NESTING {
            return Err(format!("brackets nest at most {MAX_NESTING} levels deep"));
        }
        if *t != Token::Period {
            since_dot += 1;
            continue;
        }
        dots = if since_dot <= 1 { dots + 1 } else { 1 };
        since_dot = 0;
        if dots >= MAX_NAME_PARTS {
            return Err(format!("a dotted name has at most {MAX_NAME_PARTS} parts"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_dotted_names_are_refused_before_parsing() {
        assert!(check("SELECT datafusion.public.temp.value FROM datafusion.public.temp").is_ok());
        assert!(check("SELECT a.b + c.d, 1.5, t. x FROM t WHERE s = 'a.b.c.d.e.f.g.h'").is_ok());
        // What the fuzzer found, and its core.
        let found = "SELECT dd. avdece.e. vice. aice.e.ce. vice. avdece.e. viceece.ce.ce.ce. vice. a [x";
        assert!(check(found).is_err());
        assert!(check(&format!("SELECT {}a[b c]", "x.y.".repeat(10))).is_err());
        assert!(check(&format!("SELECT {}a", "x. ".repeat(6))).is_err());
        assert!(check(&"1,".repeat(MAX_TOKENS)).is_err());
        // The second: unclosed nested calls.
        assert!(check(&format!("SELECT {}", "not(".repeat(40))).is_err());
        let nested = format!("SELECT {}1{}", "abs(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert!(check(&nested).is_ok());
        // The third: subscripts after short dotted names.
        assert!(check("SELECT x.e[~t.E[~t.E[~t.E[~t.E[~t").is_err());
        assert!(check("SELECT a[1], b[2], [1, 2], m['k'] FROM t").is_ok());
        assert!(check(&" ".repeat(MAX_SQL_BYTES + 1)).is_err());
    }
}
