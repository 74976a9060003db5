//! `${VAR}` and `${VAR:-default}` references in the agent file, so one file
//! serves several machines (model paths, ports). `$$` is a literal `$`;
//! comment lines are not expanded.

use anyhow::bail;

/// Replace every reference in `text` through `lookup`; an unset variable without
/// a default is an error naming it and its line.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        // Comment lines are left alone (they may show the syntax itself).
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let tail = &rest[at + 1..];
            if let Some(after) = tail.strip_prefix('$') {
                out.push('$');
                rest = after;
            } else if let Some(body) = tail.strip_prefix('{') {
                let Some(end) = body.find('}') else {
                    bail!("line {}: unterminated ${{ reference", n + 1);
                };
                let (name, default) = match body[..end].split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (&body[..end], None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    bail!("line {}: {name:?} is not a variable name", n + 1);
                }
                match (lookup(name), default) {
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => bail!(
                        "line {}: environment variable {name} is not set (write ${{{name}:-default}} for a default)",
                        n + 1
                    ),
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = tail;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "MODELS").then(|| "/srv/models".to_owned())
    }

    #[test]
    fn references_defaults_and_escapes_expand() {
        let text = "a: ${MODELS}/x\nb: ${PORT:-8000}\nc: $$HOME and $5\n  # ${NOPE}\n";
        assert_eq!(
            expand(text, env).expect("expands"),
            "a: /srv/models/x\nb: 8000\nc: $HOME and $5\n  # ${NOPE}\n"
        );
    }

    #[test]
    fn an_unset_variable_is_named_with_its_line() {
        let e = expand("a: 1\nb: ${NOPE}\n", env).expect_err("unset");
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("NOPE"),
            "{e}"
        );
    }
}
