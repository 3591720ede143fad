//! The refusal users choose (`refusal:`): the status of a rate-limit refusal, the content type
//! of every response sluice writes for a route (429, and its own 502/503/504), and a body
//! template for the 429 with `{route}`, `{limit}`, `{window_s}`, `{retry_after}`, `{caller}`.

/// How a route's refusals look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalStyle {
    /// The status of a rate-limit refusal (default 429).
    pub status: u16,
    pub format: Format,
    /// The 429's body; `None`: the format's default body.
    pub body: Option<Template>,
}

impl Default for RefusalStyle {
    fn default() -> Self {
        RefusalStyle {
            status: 429,
            format: Format::Json,
            body: None,
        }
    }
}

/// The content type of the responses sluice writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`: sluice's own `{"error": ...}` bodies.
    Json,
    /// `application/problem+json` (RFC 9457): `type`, `title`, `status`, `detail`, and the
    /// fields of the JSON body as extension members.
    Problem,
    /// `text/plain; charset=utf-8`: one line.
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Problem => "application/problem+json",
            Format::Text => "text/plain; charset=utf-8",
        }
    }
}

/// A placeholder of a body template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Route,
    Limit,
    WindowS,
    RetryAfter,
    Caller,
}

pub const FIELDS: [(&str, Field); 5] = [
    ("route", Field::Route),
    ("limit", Field::Limit),
    ("window_s", Field::WindowS),
    ("retry_after", Field::RetryAfter),
    ("caller", Field::Caller),
];

/// A body template: text with placeholders. `{name}` (lower-case letters and `_`) is a
/// placeholder, and must be a known one; any other brace is text, so a JSON body is written as
/// it is (`{"retry_in": {retry_after}}`); `{{` is a literal `{` before a name (`{{route}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// The values a refusal's template is filled with.
pub struct Values<'a> {
    pub route: &'a str,
    pub limit: u32,
    /// 0 for an in-flight limit (it has no window).
    pub window_s: u64,
    pub retry_after: u64,
    /// The caller as the identity names it (its hash, with hashed identities); empty when the
    /// request named none.
    pub caller: &'a [u8],
}

impl Template {
    /// Parses `text`; the error names an unknown placeholder.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('{') {
            literal.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(escaped) = after.strip_prefix('{') {
                literal.push('{');
                rest = escaped;
                continue;
            }
            let name_len = after
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
                .count();
            if name_len == 0 || after.as_bytes().get(name_len) != Some(&b'}') {
                literal.push('{');
                rest = after;
                continue;
            }
            let name = &after[..name_len];
            let Some((_, field)) = FIELDS.iter().find(|(n, _)| *n == name) else {
                let known: Vec<String> = FIELDS.iter().map(|(n, _)| format!("{{{n}}}")).collect();
                return Err(format!(
                    "unknown placeholder {{{name}}} (known: {})",
                    known.join(", ")
                ));
            };
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Field(*field));
            rest = &after[name_len + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }

    /// The body, each value escaped for `format` (inside a JSON string for the JSON formats;
    /// control characters dropped for text).
    pub fn render(&self, format: Format, v: &Values<'_>) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => {
                    let value = match f {
                        Field::Route => v.route.to_string(),
                        Field::Limit => v.limit.to_string(),
                        Field::WindowS => v.window_s.to_string(),
                        Field::RetryAfter => v.retry_after.to_string(),
                        Field::Caller => String::from_utf8_lossy(v.caller).into_owned(),
                    };
                    escape_into(&mut out, &value, format);
                }
            }
        }
        out
    }
}

fn escape_into(out: &mut String, value: &str, format: Format) {
    match format {
        Format::Json | Format::Problem => {
            let quoted = serde_json::Value::from(value).to_string();
            out.push_str(&quoted[1..quoted.len() - 1]);
        }
        Format::Text => out.extend(value.chars().filter(|c| !c.is_control())),
    }
}

/// An RFC 9457 problem: `type`, `title`, `status` and `detail`, with `fields` (the members
/// sluice's JSON body has) as extension members.
pub fn problem(status: u16, title: &str, detail: &str, fields: &serde_json::Value) -> String {
    let mut object = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    });
    if let (Some(o), Some(extra)) = (object.as_object_mut(), fields.as_object()) {
        for (k, v) in extra {
            o.entry(k.clone()).or_insert(v.clone());
        }
    }
    object.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(caller: &'a [u8]) -> Values<'a> {
        Values {
            route: "login",
            limit: 5,
            window_s: 60,
            retry_after: 41,
            caller,
        }
    }

    #[test]
    fn templates_fill_and_escape_their_placeholders() {
        let t = Template::parse(
            r#"{"msg":"{caller} is over {limit}/{window_s}s on {route}","retry":{retry_after},"x":{"y":1}}"#,
        )
        .unwrap();
        let body = t.render(Format::Json, &values(br#"a"b\c"#));
        assert_eq!(
            body,
            r#"{"msg":"a\"b\\c is over 5/60s on login","retry":41,"x":{"y":1}}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["retry"], 41);
        let text = Template::parse("slow down, {caller}: retry in {retry_after} s").unwrap();
        assert_eq!(
            text.render(Format::Text, &values(b"bob")),
            "slow down, bob: retry in 41 s"
        );
    }

    #[test]
    fn unknown_placeholders_are_refused_and_other_braces_are_text() {
        assert_eq!(
            Template::parse("{user}").unwrap_err(),
            "unknown placeholder {user} (known: {route}, {limit}, {window_s}, {retry_after}, {caller})"
        );
        let literal = |t: &str| {
            Template::parse(t)
                .unwrap()
                .render(Format::Text, &values(b""))
        };
        assert_eq!(literal("{route"), "{route");
        assert_eq!(literal("a } b {} {Route}"), "a } b {} {Route}");
        assert_eq!(literal("{{route}"), "{route}");
    }

    #[test]
    fn a_problem_has_the_rfc_9457_members() {
        let p = problem(
            429,
            "Too Many Requests",
            "d",
            &serde_json::json!({"route": "r", "status": 1}),
        );
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["type"], "about:blank");
        assert_eq!(v["status"], 429, "the problem's own members win");
        assert_eq!(v["route"], "r");
    }
}
