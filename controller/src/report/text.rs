//! Text helpers every format shares: how times, durations, numbers and commands are written,
//! and the escaping of untrusted text for HTML and Markdown.

use chrono::SecondsFormat;
use tollgate_domain::Timestamp;

/// Appends to a `String`. Formatting into a `String` cannot fail, so the `fmt::Result` carries
/// nothing worth handling.
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = write!($out, $($arg)*);
    }};
}
pub(crate) use put;

/// A timestamp as RFC 3339 in UTC (`2026-01-01T00:00:10Z`), with sub-seconds only when present.
pub(crate) fn time(at: &Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A duration for people: `850ms`, `12.5s`, `4m 10s`, `1h 2m 3s`.
pub(crate) fn duration_ms(ms: i64) -> String {
    if ms.abs() < 1000 {
        return format!("{ms}ms");
    }
    if ms.abs() < 60_000 {
        return format!("{}s", trim_zeros(format!("{:.1}", ms as f64 / 1000.0)));
    }
    let sign = if ms < 0 { "-" } else { "" };
    let secs = ms.unsigned_abs() / 1000;
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{sign}{h}h {m}m {s}s")
    } else {
        format!("{sign}{m}m {s}s")
    }
}

/// A number exactly as stored (shortest form that reads back the same): evidence values and
/// measurements, where rounding could hide which side of a limit a value is on.
pub(crate) fn exact(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else {
        "n/a".to_owned()
    }
}

/// A telemetry statistic, to two decimals without trailing zeros.
pub(crate) fn stat(value: f64) -> String {
    Stat(value).to_string()
}

/// [`stat`] without an allocation, for the hot paths: a fleet report writes millions.
#[derive(Clone, Copy)]
pub(crate) struct Stat(pub f64);

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.0;
        if !value.is_finite() {
            return f.write_str("n/a");
        }
        match scaled(value, 2) {
            Some((negative, mut units, mut decimals)) => {
                let scale = SCALES[decimals as usize];
                let (whole, mut fraction) = (units / scale, units % scale);
                // Trailing zeros go; `-0` reads as a typo in a table.
                while decimals > 0 && fraction % 10 == 0 {
                    fraction /= 10;
                    decimals -= 1;
                }
                units = whole;
                if negative && (units != 0 || decimals > 0) {
                    f.write_str("-")?;
                }
                write!(f, "{units}")?;
                if decimals > 0 {
                    write!(f, ".{fraction:0width$}", width = decimals as usize)?;
                }
                Ok(())
            }
            None => {
                let text = trim_zeros(format!("{value:.2}"));
                f.write_str(if text == "-0" { "0" } else { &text })
            }
        }
    }
}

/// A number with exactly `decimals` (at most 3) decimals, as `{:.N}` writes it, without
/// the slow exact-formatting path of the standard library for the common case.
#[derive(Clone, Copy)]
pub(crate) struct Fixed(pub f64, pub u32);

impl std::fmt::Display for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Fixed(value, decimals) = *self;
        match scaled(value, decimals) {
            Some((negative, units, decimals)) => {
                let scale = SCALES[decimals as usize];
                if negative {
                    f.write_str("-")?;
                }
                write!(f, "{}", units / scale)?;
                if decimals > 0 {
                    write!(f, ".{:0width$}", units % scale, width = decimals as usize)?;
                }
                Ok(())
            }
            None => write!(f, "{value:.*}", decimals as usize),
        }
    }
}

const SCALES: [u64; 4] = [1, 10, 100, 1000];

/// `value` × 10^`decimals` rounded to an integer, with its sign apart: `None` when the fast
/// path could differ from `{:.N}` (not finite, too large, or within a hair of a rounding tie,
/// where the multiplication's own rounding could decide), so the caller falls back to it.
fn scaled(value: f64, decimals: u32) -> Option<(bool, u64, u32)> {
    let decimals = decimals.min(3);
    if !value.is_finite() {
        return None;
    }
    let scaled = value.abs() * SCALES[decimals as usize] as f64;
    if scaled >= 1e15 || (scaled.fract() - 0.5).abs() < 1e-6 {
        return None;
    }
    Some((value.is_sign_negative(), scaled.round() as u64, decimals))
}

fn trim_zeros(text: String) -> String {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// An argv as a shell would need it typed, quoting only the arguments that need it.
pub(crate) fn shell_join(argv: &[String]) -> String {
    let mut out = String::new();
    for (idx, arg) in argv.iter().enumerate() {
        if idx > 0 {
            out.push(' ');
        }
        let plain = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if plain {
            out.push_str(arg);
        } else {
            out.push('\'');
            out.push_str(&arg.replace('\'', r"'\''"));
            out.push('\'');
        }
    }
    out
}

/// A verdict or outcome name as the report's headline word (`FAILED`).
pub(crate) fn label(name: &str) -> String {
    name.to_ascii_uppercase()
}

/// Feeds `text` to `emit` in chunks with every markup character escaped, so untrusted text
/// (node names, messages, log tails) can never become markup. Control characters other than
/// newline and tab become U+FFFD: they are invalid in HTML and could carry terminal escapes.
fn html_escape_chunks<E>(text: &str, mut emit: impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
    let mut start = 0;
    for (idx, c) in text.char_indices() {
        let replacement = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '"' => "&quot;",
            '\'' => "&#39;",
            c if c.is_control() && c != '\n' && c != '\t' => "\u{FFFD}",
            _ => continue,
        };
        emit(&text[start..idx])?;
        emit(replacement)?;
        start = idx + c.len_utf8();
    }
    emit(&text[start..])
}

/// Untrusted text for HTML: displays escaped, in element content and in quoted attributes.
#[derive(Clone, Copy)]
pub(crate) struct Html<'a>(pub &'a str);

impl std::fmt::Display for Html<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        html_escape_chunks(self.0, |chunk| f.write_str(chunk))
    }
}

/// `text` as one line of inline Markdown that renders as exactly that text: line breaks become
/// spaces, control characters U+FFFD, and every character that could start markup (emphasis,
/// links, HTML, entities, table cells, code, a block at the start of a line) is
/// backslash-escaped. Characters that cannot start markup where they stand stay as they are,
/// so the file reads well in a terminal: `gpu_temp_c`, `< 88`, `a > b`.
pub(crate) fn md(text: &str) -> String {
    // Most text (names, versions, numbers) holds nothing that could start markup.
    let plain = text.bytes().enumerate().all(|(idx, b)| {
        b.is_ascii_alphanumeric()
            || b == b' '
            || b == b':'
            || b == b'/'
            || b == b','
            || (b == b'-' && idx > 0)
            || (b == b'.'
                && text
                    .as_bytes()
                    .get(idx + 1)
                    .is_some_and(u8::is_ascii_alphanumeric))
    });
    if plain {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    let chars: Vec<char> = text.chars().collect();
    let next_is = |idx: usize, test: fn(char) -> bool| chars.get(idx + 1).is_some_and(|&c| test(c));
    for (idx, &c) in chars.iter().enumerate() {
        let escape = match c {
            '\\' | '`' | '*' | '[' | ']' | '|' | '~' | '#' => true,
            // Raw HTML and autolinks open only with a letter, `/`, `!` or `?` after `<`.
            '<' => next_is(idx, |n| n.is_ascii_alphabetic() || "/!?".contains(n)),
            // An entity or character reference needs a name or `#` after `&`.
            '&' => next_is(idx, |n| n.is_ascii_alphanumeric() || n == '#'),
            // Block markers count only at the start of the text: quote, list, heading rule.
            '>' | '-' | '+' | '=' => idx == 0,
            // `1. ` or `1) ` at the start would begin an ordered list.
            '.' | ')' => {
                idx > 0
                    && chars[..idx].iter().all(char::is_ascii_digit)
                    && chars.get(idx + 1).is_none_or(|n| n.is_whitespace())
            }
            '_' => {
                // GFM never reads an underscore inside a word as emphasis.
                let inside_word = idx > 0
                    && chars[idx - 1].is_alphanumeric()
                    && next_is(idx, char::is_alphanumeric);
                !inside_word
            }
            _ => false,
        };
        match c {
            '\r' | '\n' | '\t' => out.push(' '),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => {
                if escape {
                    out.push('\\');
                }
                out.push(c);
            }
        }
    }
    out
}

/// `text` as a Markdown code span, for identifiers and digests; falls back to [`md`] when the
/// text holds a backtick or a line break.
pub(crate) fn md_code(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    if text.contains(['`', '\n', '\r']) || text.chars().any(char::is_control) {
        return md(text);
    }
    // A pipe ends a table cell even inside a code span; GFM reads `\|` as a pipe there.
    format!("`{}`", text.replace('|', r"\|"))
}

/// `text` with control characters other than newline and tab replaced, for Markdown code
/// blocks read in terminals.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html_escape(text: &str) -> String {
        Html(text).to_string()
    }

    #[test]
    fn html_escape_leaves_no_markup() {
        assert_eq!(
            html_escape(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(html_escape("ok\u{1b}[31m"), "ok\u{FFFD}[31m");
        assert_eq!(html_escape("°C — plain"), "°C — plain");
        assert_eq!(format!("{}", Html("a<b")), "a&lt;b");
    }

    #[test]
    fn markdown_escape_keeps_words_readable() {
        assert_eq!(md("gpu_temp_c"), "gpu_temp_c");
        assert_eq!(md("_x_ *y* [a](b) <b>|"), r"\_x\_ \*y\* \[a\](b) \<b>\|");
        assert_eq!(md("max < 88, a > b, x-y"), "max < 88, a > b, x-y");
        assert_eq!(md("> quote"), r"\> quote");
        assert_eq!(md("- item"), r"\- item");
        assert_eq!(md("12. item"), r"12\. item");
        assert_eq!(md("v1.2"), "v1.2");
        assert_eq!(md("12.5 GB/s"), "12.5 GB/s");
        assert_eq!(md("&lt; & b"), r"\&lt; & b");
        assert_eq!(md("two\nlines"), "two lines");
        assert_eq!(md("1. item"), r"1\. item");
        assert_eq!(md("1."), r"1\.");
        assert_eq!(md("lab-a-r01-n003"), "lab-a-r01-n003");
        assert_eq!(md("550.54.15"), "550.54.15");
        assert_eq!(md_code("a|b"), r"`a\|b`");
        assert_eq!(md_code("a`b"), r"a\`b");
    }

    #[test]
    fn fast_fixed_formatting_matches_the_standard_library() {
        let mut value = -1234.5678_f64;
        while value < 1234.5678 {
            for decimals in 0..=3 {
                assert_eq!(
                    Fixed(value, decimals).to_string(),
                    format!("{value:.*}", decimals as usize),
                    "{value} to {decimals} decimals"
                );
            }
            let old = trim_zeros(format!("{value:.2}"));
            let old = if old == "-0" { "0".to_owned() } else { old };
            assert_eq!(stat(value), old, "{value}");
            value += 0.0137;
        }
        for value in [
            0.0,
            -0.0,
            0.005,
            0.125,
            2.675,
            1e20,
            f64::NAN,
            -0.001,
            99.995,
        ] {
            assert_eq!(
                Fixed(value, 2).to_string(),
                format!("{value:.2}"),
                "{value}"
            );
        }
        assert_eq!(stat(-0.0), "0");
        assert_eq!(stat(70.0), "70");
        assert_eq!(stat(70.5), "70.5");
    }

    #[test]
    fn numbers_and_durations() {
        assert_eq!(stat(72.333_333), "72.33");
        assert_eq!(stat(88.0), "88");
        assert_eq!(stat(-0.001), "0");
        assert_eq!(exact(88.004), "88.004");
        assert_eq!(exact(f64::NAN), "n/a");
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(12_500), "12.5s");
        assert_eq!(duration_ms(10_000), "10s");
        assert_eq!(duration_ms(250_000), "4m 10s");
        assert_eq!(duration_ms(3_723_000), "1h 2m 3s");
    }

    #[test]
    fn shell_join_quotes_only_what_needs_it() {
        let argv = ["sh", "-c", "echo 'hi' there"].map(String::from);
        assert_eq!(shell_join(&argv), r"sh -c 'echo '\''hi'\'' there'");
    }
}
