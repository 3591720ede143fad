//! Secrets never reach a log line: the password of a store URL is shown as `***` wherever a
//! URL, a config or an error is printed (start, reload, `/health` reasons, `--check`).

/// `url` with the password of its user information replaced by `***`:
/// `redis://:pw@host:6379/0` → `redis://:***@host:6379/0`, `rediss://app:pw@h` →
/// `rediss://app:***@h`. A URL without a password is returned as it is.
pub fn url(url: &str) -> String {
    text(url)
}

/// `text` with the password of every `scheme://user:password@` in it replaced by `***`
/// (error messages can quote a URL).
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or blank; its user information at
        // the last '@' in it.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        let Some(userinfo_end) = authority.rfind('@') else {
            // No user information: look on from here (the authority may hold a nested URL).
            rest = tail;
            continue;
        };
        let userinfo = &authority[..userinfo_end];
        match userinfo.find(':') {
            Some(colon) => {
                out.push_str(&userinfo[..=colon]);
                out.push_str("***");
            }
            None => out.push_str(userinfo),
        }
        out.push_str(&authority[userinfo_end..]);
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_is_kept() {
        let cases = [
            (
                "redis://:pw@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("rediss://app:s3cr@t@h:6380", "rediss://app:***@h:6380"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://user@h:1", "redis://user@h:1"),
            ("redis://:pw@h?x=1", "redis://:***@h?x=1"),
            (
                "connect redis://:a@h:1 and \"redis://:b@k:2\" failed",
                "connect redis://:***@h:1 and \"redis://:***@k:2\" failed",
            ),
            ("no url here", "no url here"),
            ("://", "://"),
            ("://redis://:pw@h:1", "://redis://:***@h:1"),
        ];
        for (given, shown) in cases {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    proptest::proptest! {
        /// Whatever surrounds it, a password given in a URL is never printed.
        #[test]
        fn no_password_survives(
            before in "[ a-z:/]{0,12}",
            user in "[a-z]{0,6}",
            password in "P[A-Za-z0-9]{7,19}",
            host in "[a-z0-9.]{1,12}",
            after in "[ a-z/?#]{0,12}",
        ) {
            let given = format!("{before}redis://{user}:{password}@{host}:6379{after}");
            let shown = text(&given);
            proptest::prop_assert!(!shown.contains(&password), "{shown}");
            proptest::prop_assert!(shown.contains(&host), "{shown}");
        }
    }
}
