//! `WWW-Authenticate` parsing (RFC 7235): one header may hold several challenges, and quoted values may hold
//! commas, `=` and escaped quotes (`scope="repository:a:pull,push"`).

/// One challenge: the scheme (lowercased) and its auth-params (names lowercased, values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> String {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    /// A quoted-string, the cursor on its opening quote; an unterminated one runs to the end.
    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                _ => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    /// An unquoted value: up to a comma or whitespace.
    fn bare(&mut self) -> String {
        let start = self.i;
        while self.peek().is_some_and(|c| !matches!(c, b',' | b' ' | b'\t')) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
}

/// Every challenge in one header value, in order. Malformed input yields what could be read, never a panic.
pub fn parse(header: &str) -> Vec<Challenge> {
    let mut c = Cursor { s: header.as_bytes(), i: 0 };
    let mut out = Vec::new();
    loop {
        while matches!(c.peek(), Some(b' ' | b'\t' | b',')) {
            c.i += 1;
        }
        if c.peek().is_none() {
            break;
        }
        let scheme = c.token();
        if scheme.is_empty() {
            c.i += 1; // not a token character: skip it
            continue;
        }
        let mut challenge = Challenge { scheme: scheme.to_ascii_lowercase(), params: Vec::new() };
        loop {
            c.skip_ws();
            let save = c.i;
            let name = c.token();
            c.skip_ws();
            if name.is_empty() || c.peek() != Some(b'=') {
                // The next challenge's scheme (or a token68, which registries do not use).
                c.i = save;
                break;
            }
            c.i += 1;
            c.skip_ws();
            let value = if c.peek() == Some(b'"') { c.quoted() } else { c.bare() };
            challenge.params.push((name.to_ascii_lowercase(), value));
            c.skip_ws();
            match c.peek() {
                Some(b',') => c.i += 1,
                _ => break,
            }
        }
        out.push(challenge);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_bearer() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#;
        let cs = parse(h);
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].scheme, "bearer");
        assert_eq!(cs[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(cs[0].param("service"), Some("registry.docker.io"));
        assert_eq!(cs[0].param("scope"), Some("repository:library/ubuntu:pull"));
    }

    #[test]
    fn commas_and_escapes_in_quotes_and_several_challenges() {
        let h = r#"Bearer realm="https://h/t?a=1,b=2", scope="repository:x:pull,push", error="say \"hi\"" , Basic realm="r, s""#;
        let cs = parse(h);
        assert_eq!(cs.len(), 2, "{cs:?}");
        assert_eq!(cs[0].param("realm"), Some("https://h/t?a=1,b=2"));
        assert_eq!(cs[0].param("scope"), Some("repository:x:pull,push"));
        assert_eq!(cs[0].param("error"), Some(r#"say "hi""#));
        assert_eq!(cs[1].scheme, "basic");
        assert_eq!(cs[1].param("realm"), Some("r, s"));
    }

    #[test]
    fn bare_values_case_and_garbage() {
        let cs = parse("BASIC Realm=registry");
        assert_eq!(cs[0].scheme, "basic");
        assert_eq!(cs[0].param("realm"), Some("registry"));
        assert_eq!(parse("Basic")[0].params.len(), 0);
        for junk in ["", ",,,", "\"", "=", "Bearer realm=\"unterminated", "Negotiate abc==", "é ü = ,"] {
            let _ = parse(junk);
        }
        assert_eq!(parse("Bearer realm=\"unterminated")[0].param("realm"), Some("unterminated"));
    }

    #[test]
    fn schemes_and_param_names_are_case_insensitive_values_are_not() {
        let cs = parse(r#"bEaReR REALM="https://H/Token", Service=Reg, Negotiate, basic realm="x""#);
        let schemes: Vec<&str> = cs.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["bearer", "negotiate", "basic"]);
        assert_eq!(cs[0].param("realm"), Some("https://H/Token"), "values keep their case");
        assert_eq!(cs[0].param("service"), Some("Reg"));
        assert_eq!(cs[2].param("realm"), Some("x"));
    }
}
