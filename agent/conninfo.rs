//! libpq connection strings, as far as a rehearsal needs them: the database
//! name read, and the same string pointed at another database. Both forms
//! are understood: `key=value` pairs (values may be single-quoted, with `\`
//! escapes) and `postgres://` / `postgresql://` URIs.

/// Databases named so are rehearsals' scratch copies: created and dropped
/// only by a rehearsal, and a production database may not be named so.
pub const SCRATCH_PREFIX: &str = "rollgate_rehearsal_";

/// The connection string with its database name set to `db`.
pub fn with_dbname(conninfo: &str, db: &str) -> Result<String, String> {
    let t = conninfo.trim();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        let mut url = url::Url::parse(t).map_err(|e| format!("not a connection URI: {e}"))?;
        url.set_path(&format!("/{db}"));
        // A `dbname=` query parameter would win over the path: drop it.
        let query: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "dbname")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.set_query(None);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        return Ok(url.to_string());
    }
    let mut pairs = parse(t)?;
    pairs.retain(|(k, _)| k != "dbname");
    pairs.push(("dbname".into(), db.into()));
    Ok(pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect::<Vec<_>>()
        .join(" "))
}

/// The database name the connection string names, if it names one.
pub fn dbname(conninfo: &str) -> Option<String> {
    let t = conninfo.trim();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        let url = url::Url::parse(t).ok()?;
        if let Some((_, v)) = url.query_pairs().find(|(k, _)| k == "dbname") {
            return Some(v.into_owned());
        }
        let path = url.path().trim_start_matches('/');
        return (!path.is_empty()).then(|| path.to_string());
    }
    parse(t)
        .ok()?
        .into_iter()
        .rev()
        .find(|(k, _)| k == "dbname")
        .map(|(_, v)| v)
}

fn parse(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("`{key}` has no value"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("the value of `{key}` has no closing quote")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.extend(chars.next());
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_strings() {
        let c = "host=127.0.0.1 port=5432 user=gw dbname=gateway";
        assert_eq!(dbname(c).as_deref(), Some("gateway"));
        let s = with_dbname(c, "rollgate_rehearsal_ab").unwrap();
        assert_eq!(
            s,
            "host=127.0.0.1 port=5432 user=gw dbname=rollgate_rehearsal_ab"
        );
        assert_eq!(dbname(&s).as_deref(), Some("rollgate_rehearsal_ab"));
        let q = "host=/tmp password='a b\\'c' dbname = 'my db'";
        assert_eq!(dbname(q).as_deref(), Some("my db"));
        let s = with_dbname(q, "x").unwrap();
        assert_eq!(s, "host=/tmp password='a b\\'c' dbname=x");
        assert!(with_dbname("host", "x").is_err());
        assert_eq!(dbname("host=h"), None);
    }

    #[test]
    fn uris() {
        let u = "postgres://gw:pw@127.0.0.1:5432/gateway?sslmode=disable";
        assert_eq!(dbname(u).as_deref(), Some("gateway"));
        let s = with_dbname(u, "rollgate_rehearsal_ab").unwrap();
        assert_eq!(
            s,
            "postgres://gw:pw@127.0.0.1:5432/rollgate_rehearsal_ab?sslmode=disable"
        );
        let s = with_dbname("postgresql://h/gateway?dbname=other", "x").unwrap();
        assert_eq!(dbname(&s).as_deref(), Some("x"));
    }
}
