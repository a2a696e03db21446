//! A scanner for the body nearly every `POST /v1/check` sends: one JSON object whose members
//! are `policy`, `rates`, `algorithm`, `key` (strings without escapes) and `cost` (a plain
//! non-negative integer), each at most once, in any order, with any JSON whitespace.
//!
//! Anything else (an escape, another member, `null`, a duplicate, a number with a sign,
//! fraction or exponent, trailing bytes…) is not scanned: the caller falls back to serde,
//! which gives the same result or the exact error message. So the scanner only has to be
//! right about the documents it accepts, and a property test checks that on those it agrees
//! with serde. Measured with `cargo bench -p tollgate-server --bench vs_throttlecrab`
//! (callgrind): serde's derived parser with `deny_unknown_fields` was ≈ 1,400 instructions of
//! a check's ≈ 18,800.

use super::hot::{BorrowedRequest, Text};
use std::borrow::Cow;

/// The request in `body` if it has the simple shape described in the module documentation;
/// `None` means "ask serde" (which may accept it or report the error).
pub(super) fn simple_request(body: &[u8]) -> Option<BorrowedRequest<'_>> {
    // One UTF-8 check for the whole body (serde checks each string; a document of this
    // shape is all strings and ASCII punctuation, so the two agree), then byte scanning:
    // every position sliced at is next to an ASCII quote, so on a character boundary.
    let text = std::str::from_utf8(body).ok()?;
    let mut s = Scanner { text, at: 0 };
    let mut req = BorrowedRequest {
        policy: None,
        rates: None,
        algorithm: None,
        key: Text::default(),
        cost: None,
        amount: None,
        checks: None,
    };
    let mut seen = 0u8;
    s.skip_space();
    s.expect(b'{')?;
    s.skip_space();
    if s.expect(b'}').is_none() {
        loop {
            let name = s.string()?;
            s.skip_space();
            s.expect(b':')?;
            s.skip_space();
            let bit = match name.as_bytes() {
                b"policy" => {
                    req.policy = Some(Text(Cow::Borrowed(s.string()?)));
                    1
                }
                b"rates" => {
                    req.rates = Some(Text(Cow::Borrowed(s.string()?)));
                    2
                }
                b"algorithm" => {
                    req.algorithm = Some(Text(Cow::Borrowed(s.string()?)));
                    4
                }
                b"key" => {
                    req.key = Text(Cow::Borrowed(s.string()?));
                    8
                }
                b"cost" => {
                    req.cost = Some(s.integer()?);
                    16
                }
                _ => return None,
            };
            if seen & bit != 0 {
                // serde reports the duplicate member.
                return None;
            }
            seen |= bit;
            s.skip_space();
            if s.expect(b',').is_some() {
                s.skip_space();
                continue;
            }
            s.expect(b'}')?;
            break;
        }
    }
    s.skip_space();
    (s.at == body.len()).then_some(req)
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// JSON whitespace: space, tab, line feed, carriage return.
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let bytes = self.text.as_bytes();
        loop {
            match *bytes.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        let value = self.text.get(start..self.at)?;
        self.at += 1;
        Some(value)
    }

    /// A non-negative integer without sign, leading zero, fraction or exponent that fits
    /// in a `u64` with room to spare (at most 19 digits).
    fn integer(&mut self) -> Option<u64> {
        let start = self.at;
        let mut n = 0u64;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            if self.at - start == 19 {
                return None;
            }
            n = n * 10 + u64::from(d - b'0');
            self.at += 1;
        }
        let len = self.at - start;
        let leading_zero = len > 1 && self.text.as_bytes()[start] == b'0';
        if len == 0 || leading_zero || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fields both parsers fill, for comparison.
    type Fields = (
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        Option<u64>,
        Option<u64>,
        bool,
    );

    fn fields(r: &BorrowedRequest<'_>) -> Fields {
        let own = |t: &Option<Text<'_>>| t.as_ref().map(|t| t.0.to_string());
        (
            own(&r.policy),
            own(&r.rates),
            own(&r.algorithm),
            r.key.0.to_string(),
            r.cost,
            r.amount,
            r.checks.is_some(),
        )
    }

    fn serde(body: &[u8]) -> Option<Fields> {
        serde_json::from_slice::<BorrowedRequest<'_>>(body)
            .ok()
            .map(|r| fields(&r))
    }

    #[test]
    fn the_common_bodies_are_scanned() {
        for body in [
            r#"{"policy":"api","key":"user-1"}"#,
            r#"{"key":"user-1","policy":"api","cost":3}"#,
            " {\n\t\"rates\" : \"10/s; 1000/day\" , \"algorithm\":\"gcra\",\"key\":\"é\"}\r\n",
            r#"{"policy":"api","key":"k","cost":0}"#,
            r#"{"policy":"api","key":"k","cost":9999999999999999999}"#,
            "{}",
        ] {
            let scanned = simple_request(body.as_bytes()).unwrap_or_else(|| panic!("{body}"));
            assert_eq!(Some(fields(&scanned)), serde(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn everything_else_is_left_to_serde() {
        for body in [
            r#"{"policy":"a\u0070i","key":"k"}"#,
            r#"{"policy":"api","key":"k","amount":1}"#,
            r#"{"checks":[]}"#,
            r#"{"policy":null,"key":"k"}"#,
            r#"{"policy":"api","policy":"api"}"#,
            r#"{"policy":"api","key":"k",}"#,
            r#"{"policy":"api","key":"k"} x"#,
            r#"{"policy":"api","key":"k","cost":01}"#,
            r#"{"policy":"api","key":"k","cost":1.0}"#,
            r#"{"policy":"api","key":"k","cost":1e3}"#,
            r#"{"policy":"api","key":"k","cost":-1}"#,
            r#"{"policy":"api","key":"k","cost":18446744073709551615}"#,
            "{\"key\":\"a\tb\"}",
            "",
            "[]",
        ] {
            assert!(simple_request(body.as_bytes()).is_none(), "{body}");
        }
        assert!(simple_request(b"{\"key\":\"\xff\"}").is_none());
    }

    /// JSON-ish documents built from the members and values a client might send, right and
    /// wrong.
    fn document() -> impl Strategy<Value = Vec<u8>> {
        let name = prop::sample::select(vec![
            "\"policy\"",
            "\"rates\"",
            "\"algorithm\"",
            "\"key\"",
            "\"cost\"",
            "\"amount\"",
            "\"checks\"",
            "\"other\"",
            "\"ke\\u0079\"",
            "policy",
        ]);
        let value = prop::sample::select(vec![
            "\"api\"",
            "\"\"",
            "\"10/s; 1000/day\"",
            "\"gcra\"",
            "\"é\u{1F600}\"",
            "\"a\\\"b\"",
            "\"a\\u0041\"",
            "\"a\tb\"",
            "\"\u{7f}\"",
            "0",
            "1",
            "7",
            "01",
            "-1",
            "1.5",
            "2e2",
            "9999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "null",
            "true",
            "[]",
            "{}",
        ]);
        let space = prop::sample::select(vec!["", "", " ", "\n\t", "\r\n  "]);
        let member = (name, space.clone(), value, space.clone())
            .prop_map(|(n, s1, v, s2)| format!("{n}{s1}:{s2}{v}"));
        (
            prop::collection::vec(member, 0..6),
            space.clone(),
            space,
            prop::sample::select(vec!["", "", "", ",", " x", "}"]),
        )
            .prop_map(|(members, lead, trail, garbage)| {
                format!("{lead}{{{}}}{trail}{garbage}", members.join(",")).into_bytes()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// What the scanner accepts, serde accepts with the same fields.
        #[test]
        fn agrees_with_serde(body in document()) {
            if let Some(scanned) = simple_request(&body) {
                prop_assert_eq!(Some(fields(&scanned)), serde(&body));
            }
        }

        /// Truncated and corrupted bodies never get past the scanner when serde refuses them.
        #[test]
        fn refuses_what_serde_refuses(
            body in document(),
            cut in 0usize..64,
            flip in 0usize..64,
            high in any::<bool>(),
        ) {
            let mut body = body;
            body.truncate(body.len().saturating_sub(cut % 3));
            if let Some(b) = body.get_mut(flip) {
                // 0x80 makes invalid UTF-8 (inside or outside a string), 0x20 changes case,
                // punctuation and control characters.
                *b ^= if high { 0x80 } else { 0x20 };
            }
            if serde(&body).is_none() {
                prop_assert!(simple_request(&body).is_none());
            }
        }
    }
}
