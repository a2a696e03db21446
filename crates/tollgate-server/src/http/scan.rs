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

use super::DecideRequest;

/// One `/v1/check` item, its strings borrowed from the body (from the scanner) or from a
/// parsed [`DecideRequest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct CheckItem<'a> {
    pub(super) policy: Option<&'a str>,
    pub(super) rates: Option<&'a str>,
    pub(super) algorithm: Option<&'a str>,
    pub(super) key: &'a str,
    pub(super) cost: Option<u64>,
}

impl<'a> CheckItem<'a> {
    /// The single-item fields of `req` (its `amount` and `checks` are the caller's to refuse
    /// or handle).
    pub(super) fn of(req: &'a DecideRequest) -> Self {
        CheckItem {
            policy: req.policy.as_deref(),
            rates: req.rates.as_deref(),
            algorithm: req.algorithm.as_deref(),
            key: &req.key,
            cost: req.cost,
        }
    }
}

/// The request in `body` if it has the simple shape described in the module documentation;
/// `None` means "ask serde" (which may accept it or report the error).
pub(super) fn simple_request(body: &[u8]) -> Option<CheckItem<'_>> {
    // One UTF-8 check for the whole body (serde checks each string; a document of this
    // shape is all strings and ASCII punctuation, so the two agree), then byte scanning:
    // every position sliced at is next to an ASCII quote, so on a character boundary.
    let text = std::str::from_utf8(body).ok()?;
    let mut s = Scanner { text, at: 0 };
    let mut req = CheckItem::default();
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
                    req.policy = Some(s.string()?);
                    1
                }
                b"rates" => {
                    req.rates = Some(s.string()?);
                    2
                }
                b"algorithm" => {
                    req.algorithm = Some(s.string()?);
                    4
                }
                b"key" => {
                    req.key = s.string()?;
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

    /// What serde parses `body` to when it is one plain item (no `amount`, no `checks`).
    fn serde(body: &[u8]) -> Option<DecideRequest> {
        serde_json::from_slice::<DecideRequest>(body)
            .ok()
            .filter(|r| r.amount.is_none() && r.checks.is_none())
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
            let owned = serde(body.as_bytes());
            assert_eq!(Some(scanned), owned.as_ref().map(CheckItem::of), "{body}");
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
                let owned = serde(&body);
                prop_assert_eq!(Some(scanned), owned.as_ref().map(CheckItem::of));
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
            if serde_json::from_slice::<DecideRequest>(&body).is_err() {
                prop_assert!(simple_request(&body).is_none());
            }
        }
    }
}
